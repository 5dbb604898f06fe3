package quota_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

func TestDimensionNames(t *testing.T) {
	tests := []struct {
		d    quota.Dimension
		name string
	}{
		{quota.DimRequests, "requests"},
		{quota.DimTokensRate, "tokens_rate"},
		{quota.DimTokens, "tokens"},
		{quota.DimGPUSeconds, "gpu_seconds"},
		{quota.DimCost, "cost"},
		{quota.DimConcurrency, "concurrency"},
		{quota.DimModel, "model"},
	}
	for _, tt := range tests {
		if got := tt.d.String(); got != tt.name {
			t.Errorf("Dimension(%d).String(): got %q, want %q", tt.d, got, tt.name)
		}
		if got, err := quota.ParseDimension(tt.name); err != nil || got != tt.d {
			t.Errorf("ParseDimension(%q): got %v, %v, want %v", tt.name, got, err, tt.d)
		}
	}
	if _, err := quota.ParseDimension("bananas"); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("ParseDimension(bananas): got %v, want ErrInvalid", err)
	}
	if got := quota.Dimension(0).String(); got != "dimension(0)" {
		t.Errorf("Dimension(0).String(): got %q, want dimension(0)", got)
	}
}

func TestWindowNames(t *testing.T) {
	for _, w := range []quota.Window{quota.WindowNone, quota.WindowDay, quota.WindowMonth} {
		got, err := quota.ParseWindow(w.String())
		if err != nil || got != w {
			t.Errorf("ParseWindow(%q): got %v, %v, want %v", w.String(), got, err, w)
		}
	}
	if quota.WindowDay.String() != "day" || quota.WindowMonth.String() != "month" {
		t.Errorf("window names: got %q %q, want day month", quota.WindowDay, quota.WindowMonth)
	}
}

func TestBound(t *testing.T) {
	if n, ok := (quota.Bound{}).Max(); ok || n != 0 {
		t.Errorf("zero Bound: got %d %v, want unbounded", n, ok)
	}
	if n, ok := quota.AtMost(0).Max(); !ok || n != 0 {
		t.Errorf("AtMost(0): got %d %v, want 0 true", n, ok)
	}
	if n, ok := quota.AtMost(-5).Max(); !ok || n != 0 {
		t.Errorf("AtMost(-5): got %d %v, want 0 true (fail closed)", n, ok)
	}
	if s := quota.AtMost(7).String() + " " + (quota.Bound{}).String(); s != "7 unlimited" {
		t.Errorf("Bound strings: got %q, want %q", s, "7 unlimited")
	}
}

func TestLimitsValidate(t *testing.T) {
	tests := []struct {
		name string
		l    quota.Limits
		ok   bool
	}{
		{"zero", quota.Limits{}, true},
		{"full", quota.Limits{Requests: quota.Rate{Limit: 10, Period: time.Minute}, OnOutage: quota.OutageDeny}, true},
		{"rate without period", quota.Limits{TokensRate: quota.Rate{Limit: 10}}, false},
		{"bad outage", quota.Limits{OnOutage: "pray"}, false},
		{"negative cap", quota.Limits{Caps: quota.Caps{MaxSteps: -1}}, false},
	}
	for _, tt := range tests {
		err := tt.l.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: got %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, quota.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tt.name, err)
		}
	}
}

func TestDenialError(t *testing.T) {
	d := &quota.Denial{Code: quota.CodeQuotaExceeded, Scope: "t/a", Dimension: quota.DimTokens, Window: quota.WindowDay,
		Limit: 1000, Used: 900, Requested: 200, RetryAfter: time.Hour}
	want := "quota_exceeded: scope t/a tokens/day: used 900 of 1000, requested 200, retry after 1h"
	if got := d.Error(); got != want {
		t.Errorf("Error(): got %q, want %q", got, want)
	}
	if !errors.Is(d, quota.ErrQuotaExceeded) || errors.Is(d, quota.ErrRateLimited) {
		t.Errorf("errors.Is: got wrong match for %v", d)
	}
	r := &quota.Denial{Code: quota.CodeRateLimited, Scope: "u/x", Dimension: quota.DimRequests, Limit: 10, Period: time.Minute, Used: 10, Requested: 1}
	if got := r.Error(); !strings.Contains(got, "of 10 per 1m0s") {
		t.Errorf("rate Error(): got %q, want the period", got)
	}
	m := &quota.Denial{Code: quota.CodeModelNotAllowed, Scope: "t/a", Dimension: quota.DimModel, Model: "gpt-5"}
	if got := m.Error(); got != `model_not_allowed: scope t/a does not allow model "gpt-5"` {
		t.Errorf("model Error(): got %q", got)
	}
}

func TestRoundWait(t *testing.T) {
	for _, c := range []struct {
		in   time.Duration
		want string
	}{
		{10*time.Hour + 23*time.Minute + 35526206901*time.Nanosecond, "10h24m"},
		{2*time.Hour + 20*time.Second, "2h"},
		{4*time.Minute + 2500*time.Millisecond, "4m3s"},
		{5*time.Minute + 200*time.Millisecond, "5m"},
		{1234 * time.Millisecond, "1.2s"},
	} {
		if got := quota.FormatWait(c.in); got != c.want {
			t.Errorf("FormatWait(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}
