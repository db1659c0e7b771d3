"""Adapters that run Scoreline deployments inside distributed engines (Ray Data, Spark)."""
