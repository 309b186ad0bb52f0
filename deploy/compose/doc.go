// Package compose holds Corral's docker-compose deployment; its test (run
// with CORRAL_TEST_COMPOSE=1) builds the image and runs the stack for real
// with podman and docker-compose.
package compose
