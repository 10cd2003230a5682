"""The audit trail: the log and its hash chain, files, query, views, the summary report."""
