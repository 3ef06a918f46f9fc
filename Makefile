# Quick start: `make demo` (the whole flow on a local Kafka broker) and `make test`.
# Each target does its own setup through deploy/dev/bootstrap.sh.
.PHONY: bootstrap demo test

bootstrap:
	@deploy/dev/bootstrap.sh

demo:
	@deploy/dev/bootstrap.sh demo
	.venv/bin/python -m worker demo

test: bootstrap
	MODERATION_REQUIRE_KAFKA_TESTS=1 .venv/bin/python -m pytest
