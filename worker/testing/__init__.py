"""What tests, the demo and dry runs use in place of production parts: in-memory fakes of the
pipeline's ports and of kafka-python (:mod:`.fakes`, held to the real client by
``tests/contract``), a local Apache Kafka broker (:mod:`.local_kafka`), and the sample videos
(:mod:`.samples`)."""
