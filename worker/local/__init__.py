"""What runs on one machine only: the embedded broker + S3 stack, the demo, the benchmark, the GPU check."""
