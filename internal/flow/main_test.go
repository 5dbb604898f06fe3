package flow_test

import (
	"flag"
	"os"
	"testing"
)

// TestMain shortens the fuzzer's minimisation of new interesting inputs from
// the default 60s to 2s unless -fuzzminimizetime is given. Minimising a flow
// re-parses it once per byte removed, so with the default a 30-second
// FuzzParse run spends itself minimising one or two mutants of the seed
// exports instead of fuzzing.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.fuzzminimizetime" })
	if !set {
		if err := flag.Set("test.fuzzminimizetime", "2s"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
