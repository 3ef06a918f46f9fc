"""Face detection: the MTCNN adapter (:mod:`.mtcnn`) and its cross-video batcher (:mod:`.batching`)."""
