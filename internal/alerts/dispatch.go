package alerts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/sealed"
)

// Endpoint is where a webhook goes and the secret it is signed with.
type Endpoint struct {
	URL    string
	Secret string
}

// Delivery defaults.
const (
	DefaultMaxAttempts = 10
	DefaultBackoff     = time.Second
	DefaultMaxBackoff  = 10 * time.Minute
	DefaultTimeout     = 10 * time.Second
	// Retention is how long events and finished deliveries are kept:
	// longer than any period, so an event is never forgotten while its
	// period can still be evaluated.
	Retention = 62 * 24 * time.Hour
)

// batch is how many due deliveries one pass reads; parallel how many it
// sends at once.
const (
	batch    = 32
	parallel = 4
)

// Dispatcher delivers the outbox: each due delivery is claimed (so one
// instance sends it at a time), signed at the moment it is sent, posted,
// and its outcome logged in its row: delivered on a 2xx, else retried
// with exponential backoff until MaxAttempts, then failed. A delivery
// whose instance dies mid-attempt is taken over by another (or by the
// same after a restart) once its claim lapses.
type Dispatcher struct {
	Store Store
	// Box opens the tenants' webhook secrets; nil, tenants' webhooks
	// cannot be delivered (their deliveries fail saying so).
	Box *sealed.Box
	// Global is the platform's webhook (config); URL "" for none.
	Global Endpoint
	// Client sends to tenants' endpoints. It must refuse the platform's
	// own network (the SSRF guard's client): a tenant admin chose the URL.
	Client *http.Client
	// GlobalClient sends to the platform's endpoint, which the operator
	// configured and may well be internal (nil: a plain client).
	GlobalClient *http.Client
	MaxAttempts  int           // 0: DefaultMaxAttempts
	Backoff      time.Duration // first retry's wait, doubling (0: DefaultBackoff)
	MaxBackoff   time.Duration // 0: DefaultMaxBackoff
	Timeout      time.Duration // one attempt (0: DefaultTimeout)
	Log          *slog.Logger
	// OnAttempt, when set, is told each attempt's outcome: delivered,
	// retry or failed (the metric).
	OnAttempt func(target, outcome string)
	// Now is the clock (nil: time.Now).
	Now func() time.Time

	once sync.Once
	wake chan struct{}
}

func (d *Dispatcher) init() { d.once.Do(func() { d.wake = make(chan struct{}, 1) }) }

// Wake asks the running dispatcher to look for due deliveries now.
func (d *Dispatcher) Wake() {
	d.init()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Dispatcher) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// backoff is the wait after the attempts-th failed attempt: Backoff,
// doubling each time, at most MaxBackoff.
func (d *Dispatcher) backoff(attempts int) time.Duration {
	b, mx := orDefault(d.Backoff, DefaultBackoff), orDefault(d.MaxBackoff, DefaultMaxBackoff)
	for i := 1; i < attempts && b < mx; i++ {
		b *= 2
	}
	return min(b, mx)
}

// DeliverDue makes one attempt at each delivery due now (a batch of them:
// Run calls it until none is left). It returns how many were delivered.
func (d *Dispatcher) DeliverDue(ctx context.Context) (int, error) {
	due, err := d.Store.DueDeliveries(ctx, d.now(), batch)
	if err != nil {
		return 0, err
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		delivered int
		first     error
	)
	sem := make(chan struct{}, parallel)
	for _, dl := range due {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok, err := d.attempt(ctx, dl)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				delivered++
			}
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	return delivered, first
}

// attempt claims dl, sends it once and records the outcome.
func (d *Dispatcher) attempt(ctx context.Context, dl *Delivery) (bool, error) {
	timeout := orDefault(d.Timeout, DefaultTimeout)
	now := d.now()
	claimed, err := d.Store.ClaimDelivery(ctx, dl, now.Add(timeout+30*time.Second), now)
	if err != nil || !claimed {
		return false, err
	}
	ep, client, err := d.endpoint(ctx, dl)
	status := 0
	if err == nil {
		dl.URL = ep.URL
		status, err = d.send(ctx, client, ep, dl)
	}
	now = d.now()
	dl.LastStatus = status
	outcome := StatusDelivered
	switch {
	case err == nil:
		dl.Status, dl.LastError = StatusDelivered, ""
		dl.SetNext(now)
	case errs.Is(err, errs.NotFound) || errs.Is(err, errs.Invalid) || dl.Attempts >= orDefault(d.MaxAttempts, DefaultMaxAttempts):
		// No endpoint, or one that cannot be used: retrying cannot help.
		dl.Status, dl.LastError, outcome = StatusFailed, errText(err), StatusFailed
		dl.SetNext(now)
	default:
		dl.Status, dl.LastError, outcome = StatusPending, errText(err), "retry"
		dl.SetNext(now.Add(d.backoff(dl.Attempts)))
	}
	if d.OnAttempt != nil {
		d.OnAttempt(dl.Target, outcome)
	}
	lvl := slog.LevelInfo
	if outcome != StatusDelivered {
		lvl = slog.LevelWarn
	}
	d.Log.LogAttrs(ctx, lvl, "alerts: webhook attempt", slog.String("delivery", dl.ID), slog.String("event_id", dl.EventID),
		slog.String("tenant", dl.TenantID), slog.String("target", dl.Target), slog.String("host", hostOf(dl.URL)),
		slog.Int("attempt", dl.Attempts), slog.Int("status_code", status), slog.String("outcome", outcome),
		slog.String("error", dl.LastError))
	if err := d.Store.FinishAttempt(ctx, dl, now); err != nil {
		return false, err
	}
	return outcome == StatusDelivered, nil
}

// endpoint resolves where dl goes now: a tenant's webhook is read at each
// attempt, so a changed URL or secret applies to retries and a removed
// webhook stops them.
func (d *Dispatcher) endpoint(ctx context.Context, dl *Delivery) (Endpoint, *http.Client, error) {
	if dl.Target == TargetGlobal {
		if d.Global.URL == "" {
			return Endpoint{}, nil, errs.E(errs.NotFound, "the platform webhook (alerts.webhook.url) is no longer configured")
		}
		c := d.GlobalClient
		if c == nil {
			c = &http.Client{}
		}
		return d.Global, c, nil
	}
	w, err := d.Store.AlertWebhook(ctx, dl.TenantID)
	if errs.Is(err, errs.NotFound) {
		return Endpoint{}, nil, errs.E(errs.NotFound, "the tenant's webhook was removed")
	}
	if err != nil {
		return Endpoint{}, nil, err
	}
	if d.Box == nil {
		return Endpoint{}, nil, errs.E(errs.Unavailable, "this server has no secret_key_env set: the webhook's secret cannot be opened")
	}
	secret, err := d.Box.Open(w.Sealed, webhookAAD(w.TenantID))
	if err != nil {
		// Not permanent: an operator may restore the right server secret.
		return Endpoint{}, nil, fmt.Errorf("the webhook's secret cannot be opened (the server secret changed?): %w", err)
	}
	if d.Client == nil {
		return Endpoint{}, nil, errs.E(errs.Unavailable, "no guarded HTTP client for tenants' webhooks")
	}
	return Endpoint{URL: w.URL, Secret: string(secret)}, d.Client, nil
}

// send posts dl's body, signed now, and returns the status code; an error
// for anything but a 2xx.
func (d *Dispatcher) send(ctx context.Context, client *http.Client, ep Endpoint, dl *Delivery) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, orDefault(d.Timeout, DefaultTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(dl.Body))
	if err != nil {
		return 0, errs.E(errs.Invalid, "the webhook URL cannot be used: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Sluice-Webhook/1")
	req.Header.Set(EventIDHeader, dl.EventID)
	req.Header.Set(SignatureHeader, Sign(ep.Secret, d.now(), dl.Body))
	// A redirect is not followed: the receiver answers where it was asked.
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, which may hold a token
		}
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("the endpoint answered %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}

// errText is an attempt's error for the log, bounded.
func errText(err error) string {
	var e *errs.Error
	msg := err.Error()
	if errors.As(err, &e) {
		msg = e.Message
	}
	if len(msg) > 500 {
		msg = msg[:500] + "…"
	}
	return msg
}

// hostOf is a URL's host, for log lines (a webhook URL's path may hold a
// token).
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

// Run delivers due deliveries every interval, and at once when woken,
// until ctx ends; hourly it prunes what Retention has passed.
func (d *Dispatcher) Run(ctx context.Context, interval time.Duration) {
	d.init()
	t := time.NewTicker(interval)
	defer t.Stop()
	var pruned time.Time
	for {
		for {
			n, err := d.DeliverDue(ctx)
			if err != nil {
				if ctx.Err() == nil {
					d.Log.Warn("alerts: delivering webhooks", slog.String("error", err.Error()))
				}
				break
			}
			if n == 0 {
				break
			}
		}
		if now := d.now(); now.Sub(pruned) >= time.Hour {
			pruned = now
			if n, err := d.Store.PruneAlerts(ctx, now.Add(-Retention)); err != nil {
				d.Log.Warn("alerts: pruning old events", slog.String("error", err.Error()))
			} else if n > 0 {
				d.Log.Info("alerts: pruned old events and deliveries", slog.Int("rows", n))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
	}
}

// Pending counts the undelivered deliveries (for a gauge or a check).
func (d *Dispatcher) Pending(ctx context.Context) (int, error) { return d.Store.PendingDeliveries(ctx) }

// webhookAAD binds a sealed webhook secret to its tenant's row.
func webhookAAD(tenantID string) []byte { return []byte("alerts.webhook\x00" + tenantID) }
