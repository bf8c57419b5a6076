package boltstore

import (
	"os"
	"strconv"
	"testing"
)

func init() {
	if n, err := strconv.Atoi(os.Getenv("LATCH_CHUNK")); err == nil {
		reindexChunkSize = n
	}
}

var _ = testing.Short
