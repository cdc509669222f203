"""Signal processing: pulse edges, beat rate, PPG beats, the sampling loop and per-second records."""
