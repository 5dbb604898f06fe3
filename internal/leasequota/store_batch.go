package leasequota

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/internal/quota"
)

var (
	//go:embed lua/grant_batch.lua
	grantBatchBody   string
	grantBatchScript = redis.NewScript(prelude + ticketPrelude + grantFunc + grantBatchBody)
)

// BatchCall is one scope's grant in a GrantBatch: what Grant takes for a
// scope of the batch's tag.
type BatchCall struct {
	RequestID string
	Key       string // the scope key, on the batch's tag
	Wants     []Want
}

// GrantBatch carries out calls, grants on scopes of tenant's tag ("" for
// the global tag), each exactly as Grant would under its own request id
// (a retried batch replays the calls Redis carried out), with one read of
// the rate buckets of all of them and one script: a refresh round costs
// two round trips a tag rather than two a scope. A call whose rate bucket
// changed between the read and the script is read and sent again with the
// others that did, at most maxConflicts times. It returns one result per
// call, in order; on an error the outcome of every call is unknown.
func (s *Store) GrantBatch(ctx context.Context, instance, tenant string, ttl time.Duration, calls []BatchCall) ([]GrantResult, error) {
	op := "grant_batch " + instance
	if instance == "" || len(calls) == 0 || ttl <= 0 {
		return nil, fmt.Errorf("%s: %w", op, quota.ErrInvalid)
	}
	reqs := make([]grantReq, len(calls))
	for i, c := range calls {
		cop := op + " " + c.RequestID
		if c.RequestID == "" || c.Key == "" || len(c.Wants) == 0 {
			return nil, fmt.Errorf("%s: call %d: %w", cop, i, quota.ErrInvalid)
		}
		rates, err := checkWants(c.Wants)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cop, err)
		}
		reqs[i] = grantReq{op: cop, id: c.RequestID, key: c.Key, wants: c.Wants, rates: rates}
	}
	return s.grant(ctx, op, instance, tenant, ttl, reqs)
}

// grantReq is one scope's validated grant.
type grantReq struct {
	op, id, key string
	wants       []Want
	rates       bool
}

// grant runs the grant script for reqs, scopes of tenant's tag: the rate
// buckets of every call that decides one are read in one script, then
// all calls go in one script, and the calls that met a changed bucket
// (nothing done) are read and sent again.
func (s *Store) grant(ctx context.Context, op, instance, tenant string, ttl time.Duration, reqs []grantReq) ([]GrantResult, error) {
	tag := s.Tag(tenant)
	out := make([]GrantResult, len(reqs))
	todo := make([]int, len(reqs))
	for i := range todo {
		todo[i] = i
	}
	for attempt := 0; ; attempt++ {
		var (
			rnow    time.Time
			buckets [][2]string
			states  []string
			err     error
		)
		for _, i := range todo {
			if reqs[i].rates {
				states = append(states, tag+":s:"+reqs[i].key)
			}
		}
		if len(states) > 0 {
			if rnow, buckets, err = s.readRatesOf(ctx, states); err != nil {
				return nil, fmt.Errorf("%s: read rates: %w", op, err)
			}
		}
		keys := make([]string, 0, 5*len(todo)+2)
		args := make([]any, 0, 9+len(todo)*(1+8*len(reqs[todo[0]].wants)))
		args = append(args, s.now(), s.epochArg(), instance, ttl.Microseconds(), s.validity, s.replayMS, s.keyMS, s.maxTTL, len(todo))
		at := make([]int, len(todo)) // where each call's want values start in args
		for n, i := range todo {
			r := &reqs[i]
			var b [2]string
			if r.rates {
				b, buckets = buckets[0], buckets[1:]
			}
			keys = append(keys, s.keys(Scope{Tenant: tenant, Key: r.key})...)
			keys = append(keys, tag+":q:"+r.id)
			args = append(args, len(r.wants))
			at[n] = len(args)
			if args, err = s.grantArgs(args, r.wants, rnow, b); err != nil {
				return nil, fmt.Errorf("%s: %w", r.op, err)
			}
		}
		keys = append(keys, tag+":kx", tag+":epoch")
		v, err := s.run(ctx, op, grantBatchScript, keys, args)
		if err != nil {
			return nil, err
		}
		if len(v) == 1 {
			return nil, fmt.Errorf("%s: %w", op, ErrEpochLost)
		}
		var again []int
		for n, i := range todo {
			// Each call's reply comes after its length.
			if len(v) == 0 || v[0] < 2 || v[0] > int64(len(v)-1) {
				return nil, fmt.Errorf("%s: reply cut short: %w", op, ErrUnavailable)
			}
			rv := v[1 : 1+v[0]]
			v = v[1+v[0]:]
			if rv[0] == -2 {
				again = append(again, i)
				continue
			}
			r := &reqs[i]
			if out[i], err = grantResult(rv, r.wants, args[at[n]:], r.rates, rnow); err != nil {
				return nil, fmt.Errorf("%s: %w", r.op, err)
			}
		}
		if len(again) == 0 {
			return out, nil
		}
		if attempt >= maxConflicts {
			return nil, fmt.Errorf("%s: buckets changed under %d reads: %w", op, attempt+1, ErrUnavailable)
		}
		todo = again
	}
}
