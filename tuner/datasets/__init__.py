"""Dataset preparation: competition JSON reader, downloader, split and channel statistics."""
