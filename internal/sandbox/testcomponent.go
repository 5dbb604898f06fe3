package sandbox

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/run"
)

// TypeTestAllocate is a test component: it allocates "mib" MiB and touches
// every page, so that tests can drive a worker over its memory cap. Workers
// implement it only when TestComponentsEnv is 1 in their environment; the
// server never does.
const TypeTestAllocate = "TestAllocate"

// TestAllocateComponent is TestAllocate's catalog entry. Tests add it to
// flow.Components in their own process (before anything runs) so that
// flows using it validate; production builds never do.
var TestAllocateComponent = &flow.Component{
	Type:    TypeTestAllocate,
	Inputs:  []flow.Input{{Name: "input_value", Edge: true, Types: []string{"Message"}}, {Name: "mib"}},
	Outputs: []flow.Output{{Name: "text", Type: "Message"}},
}

// TestComponents returns the test components a worker implements when
// TestComponentsEnv is set.
func TestComponents() map[string]run.NodeFunc {
	return map[string]run.NodeFunc{TypeTestAllocate: testAllocate}
}

// testAllocate maps the node's "mib" MiB of anonymous memory and writes to
// every page, so that all of it is resident. The memory is mapped rather
// than taken from the Go heap so that what a run uses does not depend on
// the garbage collector or on the race detector's shadow memory.
func testAllocate(ctx context.Context, n *flow.Node, param func(string) flow.Param, input string) (string, error) {
	mib, ok := param("mib").Int()
	if !ok || mib < 0 || mib > 1<<20 {
		return "", errs.Field(errs.Unprocessable, "nodes."+n.ID+".mib", "node %s: mib must be a whole number of MiB", n.ID)
	}
	if mib > 0 {
		buf, err := syscall.Mmap(-1, 0, mib<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err != nil {
			return "", errs.E(errs.Unavailable, "node %s: map %d MiB: %v", n.ID, mib, err)
		}
		page := os.Getpagesize()
		for i := 0; i < len(buf); i += page {
			buf[i] = 1
		}
		if err := syscall.Munmap(buf); err != nil {
			return "", errs.E(errs.Unavailable, "node %s: unmap: %v", n.ID, err)
		}
	}
	out := fmt.Sprintf("allocated %d MiB", mib)
	if input != "" {
		out += " for " + input
	}
	return out, ctx.Err()
}
