"""Running the pipeline against Kafka: poll, schedule, deliver, commit.

The runner (:mod:`.runner`) only moves records: what a consumed record turns into is
:mod:`.outputs`' business, how outputs and offsets reach Kafka is :mod:`.delivery`'s, and
every Kafka client is built in :mod:`.clients`.
"""
