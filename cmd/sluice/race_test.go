//go:build race

package main

// raceDetector: the race detector slows every delivery several times over,
// so throughput targets are checked without it.
const raceDetector = true
