package run

import (
	"fmt"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// Defaults of the in-process memory ceiling.
const (
	// DefaultInProcessRunMemory is what all in-process runs together may
	// reserve (inprocess_run_memory).
	DefaultInProcessRunMemory = 512 << 20
	// DefaultInProcessRunReserve is what every in-process run reserves for
	// itself (inprocess_run_reserve): its graph, messages and model
	// answers, before any tool.
	DefaultInProcessRunReserve = 4 << 20
	// CeilingRetryAfter is the Retry-After of a run refused because the
	// ceiling is reached: in-process runs mostly wait on models, and the
	// next one to end frees its share.
	CeilingRetryAfter = 5 * time.Second
)

// MemoryCeiling bounds the memory of the runs the server executes in its
// own process (runs without memory_per_run, and capped runs when there is
// no sandbox), which no kernel limit holds. Before it starts, such a run
// reserves a fixed share, an estimate of the most it may hold: PerRun, plus
// the tool response cap for every node that fetches (URLComponent,
// APIRequest, the search components), whose responses are the large part of a run held in memory.
// A run whose share does not fit in what other runs left of Total is
// refused (unavailable, with Retry-After) instead of growing the heap. It
// is admission by estimate, not a measurement: only the sandbox's cgroups
// make the kernel hold a run to a number.
type MemoryCeiling struct {
	// Total is what all in-process runs together may reserve.
	Total int64
	// PerRun is what every run reserves before any tool.
	PerRun int64
	// PerTool is what a fetching node adds: the tool response cap.
	PerTool int64

	mu   sync.Mutex
	used int64
	runs int
}

// fetches reports node types that read responses from the network.
func fetches(typ string) bool {
	return typ == "URLComponent" || typ == "APIRequest" || isSearch(typ) || typ == TypeMCPTools
}

// Estimate is the share a run of g reserves.
func (c *MemoryCeiling) Estimate(g *flow.Flow) int64 {
	n := c.PerRun
	for _, node := range g.Nodes {
		if fetches(node.Type) {
			n += c.PerTool
		}
	}
	return n
}

// Reserve takes n bytes of the ceiling for one run and returns the func
// that gives them back (safe to call more than once). When they do not
// fit it returns an unavailable error with a Retry-After; a run that would
// not fit even alone is unprocessable.
func (c *MemoryCeiling) Reserve(n int64) (release func(), err error) {
	if n > c.Total {
		return nil, errs.E(errs.Unprocessable,
			"this flow's estimated in-process memory (%s: %s per run and %s per URL or API node) is more than the server's whole in-process run memory (%s, inprocess_run_memory); run it under a plan with memory_per_run, which executes it in the sandbox",
			sizeText(n), sizeText(c.PerRun), sizeText(c.PerTool), sizeText(c.Total))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.used+n > c.Total {
		return nil, &errs.Error{Code: errs.Unavailable, RetryAfter: CeilingRetryAfter, Message: fmt.Sprintf(
			"the server's in-process run memory is in use (%s of %s reserved, inprocess_run_memory; this run needs %s); try again shortly",
			sizeText(c.used), sizeText(c.Total), sizeText(n))}
	}
	c.used += n
	c.runs++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.used -= n
			c.runs--
			c.mu.Unlock()
		})
	}, nil
}

// InUse reports the bytes reserved and the runs holding them.
func (c *MemoryCeiling) InUse() (bytes int64, runs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.runs
}
