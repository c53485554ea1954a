"""What a machine boots: the runtime image (Dockerfile), cloud-init rendering, shipped scripts."""
