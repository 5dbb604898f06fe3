package main

import (
	"context"
	"sync/atomic"

	"github.com/sluicehq/sluice/internal/quota"
)

// engine is the quota backend the app runs on (in-process until the Redis
// wiring lands).
type engine struct {
	quota.Backend
	shared   bool
	degraded *atomic.Bool
}

func (a *App) newEngine(ctx context.Context, onMode func(string)) (*engine, error) {
	return &engine{Backend: quota.NewMemory(quota.Options{}), degraded: new(atomic.Bool)}, nil
}
