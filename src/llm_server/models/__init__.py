"""Model management: the model manager, program manager, predictor signature and backends."""
