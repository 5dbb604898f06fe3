package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/alerts"
	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/id"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// ---- quota threshold alerts ----

var _ alerts.Store = (*Store)(nil)

// RecordAlert implements alerts.Store. The event's unique key (scope,
// dimension, window, period, threshold) decides which of the instances
// that saw a crossing records it: the others' inserts do nothing. The
// outbox's bound is checked in the same transaction; concurrent records
// may pass it by a few rows.
func (s *Store) RecordAlert(ctx context.Context, ev *alerts.Event, body []byte, global bool, outboxMax int) (alerts.Recorded, error) {
	var rec alerts.Recorded
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		rec = alerts.Recorded{}
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		at := micros(ev.At)
		res, err := c.exec(`INSERT INTO alert_events (id, tenant_id, scope, dimension, time_window, period, threshold, used, lim, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (scope, dimension, time_window, period, threshold) DO NOTHING`,
			ev.ID, ev.TenantID(), ev.Scope.Key, ev.Dimension, ev.Window, ev.Period, ev.Threshold, ev.Used, ev.Limit, at)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return errs.Wrap(err, "rows affected")
		} else if n == 0 {
			return nil // recorded already, by another instance or an earlier sweep
		}
		rec.Won = true
		var targets []string
		if t := ev.TenantID(); t != "" {
			var n int
			if err := c.queryRow(`SELECT COUNT(*) FROM alert_webhooks WHERE tenant_id = ?`, t).Scan(&n); err != nil {
				return c.wrap(err)
			}
			if n > 0 {
				targets = append(targets, alerts.TargetTenant)
			}
		}
		if global {
			targets = append(targets, alerts.TargetGlobal)
		}
		if len(targets) == 0 {
			return nil
		}
		var pending int
		if err := c.queryRow(`SELECT COUNT(*) FROM alert_deliveries WHERE status = ?`, alerts.StatusPending).Scan(&pending); err != nil {
			return c.wrap(err)
		}
		if pending+len(targets) > outboxMax {
			rec.Dropped = len(targets)
			return nil
		}
		for _, t := range targets {
			if _, err := c.exec(`INSERT INTO alert_deliveries (id, event_id, tenant_id, target, body, status, next_attempt_at, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				id.NewAt("dlv", ev.At), ev.ID, ev.TenantID(), t, string(body), alerts.StatusPending, at, at, at); err != nil {
				return err
			}
			rec.Queued++
		}
		return nil
	})
	return rec, err
}

// ScopeNames implements alerts.Store: "" for what is not found.
func (s *Store) ScopeNames(ctx context.Context, tenantID, scope string) (string, string, error) {
	name := func(q string, args ...any) (string, error) {
		var v string
		err := s.r.QueryRowContext(ctx, s.d.rebind(q), args...).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return "", nil
		}
		if err != nil {
			return "", dbError(err, "read name")
		}
		return v, nil
	}
	var tname string
	if tenantID != "" {
		var err error
		if tname, err = name(`SELECT name FROM tenants WHERE id = ?`, tenantID); err != nil {
			return "", "", err
		}
	}
	kind, oid, _ := strings.Cut(scope, "/")
	var sname string
	var err error
	switch kind {
	case "tenant":
		sname, err = name(`SELECT name FROM tenants WHERE id = ?`, oid)
	case "department":
		sname, err = name(`SELECT name FROM departments WHERE id = ?`, oid)
	case "project":
		sname, err = name(`SELECT name FROM projects WHERE id = ?`, oid)
	case "user":
		sname, err = name(`SELECT name FROM users WHERE id = ?`, oid)
	case "key":
		sname, err = name(`SELECT name FROM api_keys WHERE id = ?`, oid)
	case "membership":
		u, p, _ := strings.Cut(oid, "@")
		var un, pn string
		if un, err = name(`SELECT name FROM users WHERE id = ?`, u); err == nil {
			pn, err = name(`SELECT name FROM projects WHERE id = ?`, p)
		}
		if un != "" && pn != "" {
			sname = un + "@" + pn
		}
	}
	return tname, sname, err
}

const webhookCols = "tenant_id, url, sealed, updated_by, updated_at"

func scanWebhook(r scanner) (*alerts.Webhook, error) {
	var w alerts.Webhook
	var at int64
	if err := r.Scan(&w.TenantID, &w.URL, &w.Sealed, &w.UpdatedBy, &at); err != nil {
		return nil, err
	}
	w.UpdatedAt = fromMicros(at)
	return &w, nil
}

// PutWebhook implements alerts.Store: the webhook and its audit entry in
// one transaction.
func (s *Store) PutWebhook(ctx context.Context, w *alerts.Webhook, audit *tenancy.AuditEntry) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		if _, err := c.exec(`INSERT INTO alert_webhooks (`+webhookCols+`) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (tenant_id) DO UPDATE SET url = excluded.url, sealed = excluded.sealed,
			updated_by = excluded.updated_by, updated_at = excluded.updated_at`,
			w.TenantID, w.URL, w.Sealed, w.UpdatedBy, micros(w.UpdatedAt)); err != nil {
			return err
		}
		return c.InsertAudit(audit)
	})
}

// AlertWebhook implements alerts.Store.
func (s *Store) AlertWebhook(ctx context.Context, tenantID string) (*alerts.Webhook, error) {
	return one(s.r.QueryRowContext(ctx, s.d.rebind(`SELECT `+webhookCols+` FROM alert_webhooks WHERE tenant_id = ?`), tenantID),
		scanWebhook, "alert webhook")
}

// DeleteWebhook implements alerts.Store.
func (s *Store) DeleteWebhook(ctx context.Context, tenantID string, audit *tenancy.AuditEntry) error {
	return s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		res, err := c.exec(`DELETE FROM alert_webhooks WHERE tenant_id = ?`, tenantID)
		if err != nil {
			return err
		}
		if err := affected(res, "alert webhook"); err != nil {
			return err
		}
		return c.InsertAudit(audit)
	})
}

const deliveryCols = "d.id, d.event_id, d.tenant_id, d.target, d.body, d.status, d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.url, d.created_at, d.updated_at"

// deliveryFrom joins each delivery to its event (which may have been
// pruned before a delivery still pending).
const deliveryFrom = ` FROM alert_deliveries d LEFT JOIN alert_events e ON e.id = d.event_id`

const deliveryEventCols = ", COALESCE(e.scope, ''), COALESCE(e.dimension, ''), COALESCE(e.time_window, ''), COALESCE(e.period, ''), COALESCE(e.threshold, 0)"

func scanDelivery(r scanner) (*alerts.Delivery, error) {
	var d alerts.Delivery
	var body string
	var next, created, updated int64
	if err := r.Scan(&d.ID, &d.EventID, &d.TenantID, &d.Target, &body, &d.Status, &d.Attempts, &next, &d.LastStatus, &d.LastError,
		&d.URL, &created, &updated, &d.Scope, &d.Dimension, &d.Window, &d.Period, &d.Threshold); err != nil {
		return nil, err
	}
	d.Body = []byte(body)
	d.CreatedAt, d.UpdatedAt = fromMicros(created), fromMicros(updated)
	d.SetNext(fromMicros(next))
	return &d, nil
}

// DueDeliveries implements alerts.Store.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*alerts.Delivery, error) {
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT `+deliveryCols+deliveryEventCols+deliveryFrom+
		` WHERE d.status = ? AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?`), alerts.StatusPending, micros(now), limit)
	if err != nil {
		return nil, dbError(err, "list due deliveries")
	}
	return collect(rows, func(r *sql.Rows) (*alerts.Delivery, error) { return scanDelivery(r) })
}

// ClaimDelivery implements alerts.Store: the attempt count, as read, is
// the claim's version.
func (s *Store) ClaimDelivery(ctx context.Context, d *alerts.Delivery, leaseUntil, now time.Time) (bool, error) {
	res, err := s.exec(ctx, `UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = ?, updated_at = ?
		WHERE id = ? AND status = ? AND attempts = ? AND next_attempt_at <= ?`,
		micros(leaseUntil), micros(now), d.ID, alerts.StatusPending, d.Attempts, micros(now))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, errs.Wrap(err, "rows affected")
	}
	if n == 0 {
		return false, nil
	}
	d.Attempts++
	d.SetNext(leaseUntil)
	return true, nil
}

// FinishAttempt implements alerts.Store.
func (s *Store) FinishAttempt(ctx context.Context, d *alerts.Delivery, now time.Time) error {
	_, err := s.exec(ctx, `UPDATE alert_deliveries SET status = ?, next_attempt_at = ?, last_status = ?, last_error = ?, url = ?, updated_at = ?
		WHERE id = ? AND status = ? AND attempts = ?`,
		d.Status, micros(d.Next()), d.LastStatus, d.LastError, d.URL, micros(now), d.ID, alerts.StatusPending, d.Attempts)
	return err
}

// PendingDeliveries implements alerts.Store.
func (s *Store) PendingDeliveries(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, s.d.rebind(`SELECT COUNT(*) FROM alert_deliveries WHERE status = ?`), alerts.StatusPending).Scan(&n); err != nil {
		return 0, dbError(err, "count pending deliveries")
	}
	return n, nil
}

// Deliveries implements alerts.Store: newest first.
func (s *Store) Deliveries(ctx context.Context, f alerts.DeliveryFilter) ([]*alerts.Delivery, error) {
	var w where
	w.eq("d.tenant_id", f.TenantID)
	w.eq("d.target", f.Target)
	w.eq("d.status", f.Status)
	if f.Before != "" {
		w.add("d.id < ?", f.Before)
	}
	q := ""
	if len(w.conds) > 0 {
		q = " WHERE " + strings.Join(w.conds, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = tenancy.DefaultPageSize
	}
	rows, err := s.r.QueryContext(ctx, s.d.rebind(`SELECT `+deliveryCols+deliveryEventCols+deliveryFrom+q+` ORDER BY d.id DESC LIMIT ?`),
		append(w.args, limit)...)
	if err != nil {
		return nil, dbError(err, "list deliveries")
	}
	return collect(rows, func(r *sql.Rows) (*alerts.Delivery, error) { return scanDelivery(r) })
}

// PruneAlerts implements alerts.Store. Pending deliveries stay whatever
// their age (the outbox's bound limits them).
func (s *Store) PruneAlerts(ctx context.Context, before time.Time) (int, error) {
	var n int64
	err := s.tx(ctx, s.w, func(tx *sql.Tx) error {
		c := &conn{ctx: ctx, tx: tx, d: s.d}
		res, err := c.exec(`DELETE FROM alert_deliveries WHERE status <> ? AND updated_at < ?`, alerts.StatusPending, micros(before))
		if err != nil {
			return err
		}
		a, _ := res.RowsAffected()
		if res, err = c.exec(`DELETE FROM alert_events WHERE created_at < ?`, micros(before)); err != nil {
			return err
		}
		b, _ := res.RowsAffected()
		n = a + b
		return nil
	})
	return int(n), err
}

// QueueTenantWebhook implements policy.WebhookQueuer: a delivery of body to
// the tenant's alert webhook, queued in the caller's transaction (so the
// notice and what it announces commit together); false when the tenant
// has no webhook or the outbox holds alerts.DefaultOutboxMax undelivered
// rows.
func (c *conn) QueueTenantWebhook(tenantID, eventID string, body []byte, at time.Time) (bool, error) {
	var n int
	if err := c.queryRow(`SELECT COUNT(*) FROM alert_webhooks WHERE tenant_id = ?`, tenantID).Scan(&n); err != nil {
		return false, c.wrap(err)
	}
	if n == 0 {
		return false, nil
	}
	var pending int
	if err := c.queryRow(`SELECT COUNT(*) FROM alert_deliveries WHERE status = ?`, alerts.StatusPending).Scan(&pending); err != nil {
		return false, c.wrap(err)
	}
	if pending >= alerts.DefaultOutboxMax {
		return false, nil
	}
	t := micros(at)
	_, err := c.exec(`INSERT INTO alert_deliveries (id, event_id, tenant_id, target, body, status, next_attempt_at, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		id.NewAt("dlv", at), eventID, tenantID, alerts.TargetTenant, string(body), alerts.StatusPending, t, t, t)
	return err == nil, err
}
