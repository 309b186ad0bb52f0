// Package bench holds Corral's performance benchmarks. Each prints its result
// as a ratio against a baseline measured in the same run, so numbers from
// different machines compare. Run:
//
//	go test -bench . -benchtime 1x -run '^$' ./bench/
//
// CORRAL_BENCH_GIB sets the push/pull image size (default 4), and
// CORRAL_BENCH_RSS_GIB the size pushed while the registry's memory is watched
// (default 20). CORRAL_BENCH_DIR chooses the disk (default: the temp dir).
package bench
