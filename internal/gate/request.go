package gate

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/internal/metering"
	"github.com/sluicehq/sluice/internal/quota"
)

// Request is one governed outbound request that is not a model call (an
// MCP tool call from a flow): it counts as a request against who's chain's
// rates, is refused with the meter's error (a *quota.Denial) when the
// chain has none left, and is settled whatever do returns. It uses no
// tokens: what it costs is the request itself.
func (g *Gate) Request(ctx context.Context, who metering.Who, kind, requestID string, do func(ctx context.Context) error) error {
	start := time.Now()
	c := Call{Who: who, Kind: kind, RequestID: requestID}
	ttl := time.Minute
	if d, ok := ctx.Deadline(); ok {
		ttl = time.Until(d) + time.Minute
	}
	adm, err := g.Meter.Acquire(ctx, who, kind, quota.Ask{Requests: 1}, ttl)
	if err != nil {
		g.logCall(ctx, c, &Result{}, start, "denied", err)
		return err
	}
	err = do(ctx)
	out := &Result{Admitted: true, Admission: adm}
	out.SettleErr = RetrySettle(func() error {
		_, serr := g.Meter.SettleWith(context.WithoutCancel(ctx), adm.ID, quota.Usage{}, "", nil)
		return serr
	})
	g.logCall(ctx, c, out, start, "admitted", err)
	if out.SettleErr != nil && g.Log != nil {
		g.Log.Error("settling a governed request failed", "request_id", requestID, "kind", kind, "error", out.SettleErr.Error())
	}
	return err
}
