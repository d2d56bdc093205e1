"""interloom core: the record, config, Ray execution, shard writer/reader, manifest, stats, CLI."""
