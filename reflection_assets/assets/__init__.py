"""The Dagster assets, thin over the engines: partitions, resources, the observed sources, the automation and the send_ahead job."""
