package gate

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
)

// Engine is the quota engine, asked directly for what is not a caller's
// quota: a deployment's provider limits (quota.Backend).
type Engine interface {
	Acquire(ctx context.Context, r quota.Request) (quota.Ticket, error)
	Settle(ctx context.Context, ticketID string, u quota.Usage) (quota.Settlement, error)
}

// providerLimits holds the quota limits of each deployment with an rpm or
// tpm, built once.
type providerLimits struct {
	mu sync.Mutex
	m  map[*llm.Model]*quota.Limits
}

func (p *providerLimits) of(m *llm.Model) *quota.Limits {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.m[m]; ok {
		return l
	}
	if p.m == nil {
		p.m = map[*llm.Model]*quota.Limits{}
	}
	l := &quota.Limits{}
	if rpm := m.RPM(); rpm > 0 {
		l.Requests = quota.Rate{Limit: rpm, Period: time.Minute}
	}
	if tpm := m.TPM(); tpm > 0 {
		l.TokensRate = quota.Rate{Limit: tpm, Period: time.Minute}
	}
	p.m[m] = l
	return l
}

// DeploymentScope is the engine scope that counts a deployment's calls
// against its provider's limits.
func DeploymentScope(m *llm.Model) string { return "deployment/" + m.Name() + "/" + m.Deployment() }

// takeProvider admits one attempt on dep against its provider's rpm and
// tpm, counted by the same engine as every quota (so across instances when
// it is shared). It returns the ticket to settle after the attempt ("" when
// the deployment has no such limits, or the gate no engine), or a
// retryable 429 ProviderError when the deployment is at its limit, so the
// call moves on to the next deployment without calling this one.
func (g *Gate) takeProvider(ctx context.Context, dep *llm.Model, tokens int64) (string, error) {
	if g.Engine == nil || (dep.RPM() <= 0 && dep.TPM() <= 0) {
		return "", nil
	}
	ask := quota.Ask{}
	if dep.RPM() > 0 {
		ask.Requests = 1
	}
	if dep.TPM() > 0 {
		ask.Tokens = tokens
		ask.MinTokens = tokens
	}
	t, err := g.Engine.Acquire(ctx, quota.Request{
		Chain: []quota.Scope{{Key: DeploymentScope(dep), Limits: g.providers.of(dep)}},
		Ask:   ask, TTL: 15 * time.Minute,
	})
	if err != nil {
		var d *quota.Denial
		if errors.As(err, &d) {
			return "", &llm.ProviderError{Provider: dep.Config().Provider, Status: http.StatusTooManyRequests, Code: "deployment_limit",
				Message: "deployment " + dep.Deployment() + " is at its provider's " + d.Dimension.String() + " limit", Retryable: true,
				RetryAfter: d.RetryAfter}
		}
		return "", err
	}
	return t.ID, nil
}

// settleProvider records what the attempt used against the deployment's
// limits.
func (g *Gate) settleProvider(ctx context.Context, id string, u llm.Usage) {
	if id == "" {
		return
	}
	_, _ = g.Engine.Settle(context.WithoutCancel(ctx), id, quota.Usage{InputTokens: int64(u.InputTokens), OutputTokens: int64(u.OutputTokens)})
}
