"""Legal orders with a clock: a government, court or grievance-officer order to take content
down, executed exactly once with its deadline measured (docs/orders.md).

``records`` parses an order and writes its records (pure); ``handler`` is the runner's
side-topic port that executes one.
"""
