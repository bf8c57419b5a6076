//go:build race

package broker

// raceEnabled says the tests run with -race; crashchild is built the same
// way, so that it reuses the packages the test build compiled.
const raceEnabled = true
