"""GB/T 28181 media: RTP/PS received, demuxed and served to the camera workers; RTP/PS sent (README.md)."""
