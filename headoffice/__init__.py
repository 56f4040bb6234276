"""The head-office service: enrollment, ingestion, online authorization, settlement batches, exports."""
