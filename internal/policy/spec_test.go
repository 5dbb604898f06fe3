package policy

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
)

// spec decodes a Spec written as JSON, as the API and policy files do.
func spec(t *testing.T, j string) Spec {
	t.Helper()
	var s Spec
	if err := json.Unmarshal([]byte(j), &s); err != nil {
		t.Fatalf("decode spec %s: %v", j, err)
	}
	return s
}

// specJSON encodes s; equal specs encode equally.
func specJSON(t *testing.T, s Spec) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("encode spec: %v", err)
	}
	return string(b)
}

// wantField checks that err is an *errs.Error with code and field.
func wantField(t *testing.T, err error, code errs.Code, field string) {
	t.Helper()
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v, want a %s *errs.Error on field %q", err, code, field)
	}
	if e.Code != code || e.Field != field {
		t.Fatalf("got code %s field %q (%v), want code %s field %q", e.Code, e.Field, err, code, field)
	}
}

// roundTrip decodes in into a new *T, checks it equals want, encodes it,
// checks the encoding is out, and decodes that again to want.
func roundTrip[T any](t *testing.T, in string, want T, out string) {
	t.Helper()
	var got T
	if err := json.Unmarshal([]byte(in), &got); err != nil {
		t.Fatalf("decode %s: %v", in, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decode %s: got %+v, want %+v", in, got, want)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("encode %+v: %v", got, err)
	}
	if string(b) != out {
		t.Fatalf("encode %s: got %s, want %s", in, b, out)
	}
	var again T
	if err := json.Unmarshal(b, &again); err != nil {
		t.Fatalf("decode own output %s: %v", b, err)
	}
	if !reflect.DeepEqual(again, want) {
		t.Fatalf("round trip of %s: got %+v, want %+v", in, again, want)
	}
}

func TestRateSpecJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want RateSpec
		out  string
	}{
		{`"60/min"`, RateSpec{Limit: 60, Period: time.Minute}, `"60/min"`},
		{`"3/minute"`, RateSpec{Limit: 3, Period: time.Minute}, `"3/min"`},
		{`"5/m"`, RateSpec{Limit: 5, Period: time.Minute}, `"5/min"`},
		{`"100/s"`, RateSpec{Limit: 100, Period: time.Second}, `"100/s"`},
		{`"100/sec"`, RateSpec{Limit: 100, Period: time.Second}, `"100/s"`},
		{`"100/second"`, RateSpec{Limit: 100, Period: time.Second}, `"100/s"`},
		{`"7/h"`, RateSpec{Limit: 7, Period: time.Hour}, `"7/hour"`},
		{`"7/hour"`, RateSpec{Limit: 7, Period: time.Hour}, `"7/hour"`},
		{`"1/d"`, RateSpec{Limit: 1, Period: 24 * time.Hour}, `"1/day"`},
		{`"10/30s"`, RateSpec{Limit: 10, Period: 30 * time.Second}, `"10/30s"`},
		{`"10/90s"`, RateSpec{Limit: 10, Period: 90 * time.Second}, `"10/1m30s"`},
		{`" 60 / min "`, RateSpec{Limit: 60, Period: time.Minute}, `"60/min"`},
		{`"0/min"`, RateSpec{Period: time.Minute}, `"0/min"`},
		{`{"rate":"60/min","burst":10}`, RateSpec{Limit: 60, Period: time.Minute, Burst: 10}, `{"rate":"60/min","burst":10}`},
		{`{"rate":"60/min"}`, RateSpec{Limit: 60, Period: time.Minute}, `"60/min"`},
		{`{"rate":"60/min","burst":0}`, RateSpec{Limit: 60, Period: time.Minute}, `"60/min"`},
		{`{"limit":10,"period":"1m"}`, RateSpec{Limit: 10, Period: time.Minute}, `"10/min"`},
		{`{"limit":10,"period":"min","burst":3}`, RateSpec{Limit: 10, Period: time.Minute, Burst: 3}, `{"rate":"10/min","burst":3}`},
		{`{"limit":0,"period":"30s"}`, RateSpec{Period: 30 * time.Second}, `"0/30s"`},
	} {
		t.Run(c.in, func(t *testing.T) { roundTrip(t, c.in, c.want, c.out) })
	}
}

func TestRateSpecJSONRejects(t *testing.T) {
	for _, in := range []string{
		`"10/fortnight"`, `"-5/min"`, `"abc/min"`, `"1.5/min"`, `"60"`, `"60/"`, `"/min"`, `""`,
		`"60/0s"`, `"60/-1m"`, `60`, `true`, `["60/min"]`,
		`{"rate":"60/min","burst":-1}`,
		`{"rate":"60/min","bust":10}`,
		`{"rate":"60/min","burst":10,"per":"user"}`,
		`{"rate":"60/fortnight","burst":1}`,
		`{"burst":10}`,
		`{"rate":60,"burst":10}`,
		`{"limit":10}`,
		`{"period":"1m"}`,
		`{"limit":-1,"period":"1m"}`,
		`{"limit":10,"period":"fortnight"}`,
		`{"limit":10,"period":"0s"}`,
		`{"limit":"10","period":"1m"}`,
		`{"rate":"10/min","limit":10,"period":"1m"}`,
	} {
		t.Run(in, func(t *testing.T) {
			var r RateSpec
			if err := json.Unmarshal([]byte(in), &r); err == nil {
				t.Fatalf("decode %s: got %+v, want an error", in, r)
			}
		})
	}
}

func TestBudgetJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Budget
		out  string
	}{
		{`"500000/day"`, Budget{Amount: 500000, Window: quota.WindowDay}, `"500000/day"`},
		{`"500000/d"`, Budget{Amount: 500000, Window: quota.WindowDay}, `"500000/day"`},
		{`"7200/month"`, Budget{Amount: 7200, Window: quota.WindowMonth}, `"7200/month"`},
		{`"1_000_000/mo"`, Budget{Amount: 1_000_000, Window: quota.WindowMonth}, `"1000000/month"`},
		{`"0/month"`, Budget{Window: quota.WindowMonth}, `"0/month"`},
		{`" 5 / day "`, Budget{Amount: 5, Window: quota.WindowDay}, `"5/day"`},
		{`"$50/month"`, Budget{Amount: 50_000_000, Window: quota.WindowMonth, Money: true}, `"$50/month"`},
		{`"$0.25/month"`, Budget{Amount: 250_000, Window: quota.WindowMonth, Money: true}, `"$0.25/month"`},
		{`"$0/month"`, Budget{Window: quota.WindowMonth, Money: true}, `"$0/month"`},
	} {
		t.Run(c.in, func(t *testing.T) { roundTrip(t, c.in, c.want, c.out) })
	}
}

func TestBudgetJSONRejects(t *testing.T) {
	for _, in := range []string{
		`"5/week"`, `"5/year"`, `"5/fortnight"`, `"abc/day"`, `"-5/day"`, `"1.5/day"`, `"500000"`, `"/day"`, `""`,
		`500000`, `true`, `{"amount":5}`,
		`"$-5/month"`, `"$abc/month"`, `"$NaN/month"`, `"$Inf/month"`, `"$1e13/month"`, `"$5/week"`,
	} {
		t.Run(in, func(t *testing.T) {
			var b Budget
			if err := json.Unmarshal([]byte(in), &b); err == nil {
				t.Fatalf("decode %s: got %+v, want an error", in, b)
			}
		})
	}
}

func TestBudgetsJSON(t *testing.T) {
	day := Budget{Amount: 500000, Window: quota.WindowDay}
	month := Budget{Amount: 1000000, Window: quota.WindowMonth}
	for _, c := range []struct {
		in   string
		want Budgets
		out  string
	}{
		{`"500000/day"`, Budgets{day}, `"500000/day"`},
		{`["500000/day"]`, Budgets{day}, `"500000/day"`},
		{`["500000/day","1000000/month"]`, Budgets{day, month}, `["500000/day","1000000/month"]`},
		{`["1000000/month","500000/day"]`, Budgets{month, day}, `["1000000/month","500000/day"]`},
	} {
		t.Run(c.in, func(t *testing.T) { roundTrip(t, c.in, c.want, c.out) })
	}
	for _, in := range []string{`"5/week"`, `["500000/day","5/week"]`, `5`, `{"day":5}`, `[5]`} {
		t.Run("rejects "+in, func(t *testing.T) {
			var bs Budgets
			if err := json.Unmarshal([]byte(in), &bs); err == nil {
				t.Fatalf("decode %s: got %+v, want an error", in, bs)
			}
		})
	}
}

func TestBytesJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Bytes
		out  string
	}{
		{`"2GiB"`, 2 << 30, `"2GiB"`},
		{`2147483648`, 2 << 30, `"2GiB"`},
		{`"2Gi"`, 2 << 30, `"2GiB"`},
		{`"64Mi"`, 64 << 20, `"64MiB"`},
		{`"64MiB"`, 64 << 20, `"64MiB"`},
		{`"1TiB"`, 1 << 40, `"1TiB"`},
		{`"512MB"`, 512_000_000, `"500000KiB"`},
		{`"1GB"`, 1_000_000_000, `"1000000000"`},
		{`"4K"`, 4000, `"4000"`},
		{`"1.5KiB"`, 1536, `"1536"`},
		{`"0.5GiB"`, 512 << 20, `"512MiB"`},
		{`" 16 GiB "`, 16 << 30, `"16GiB"`},
		{`"100B"`, 100, `"100"`},
		{`"100"`, 100, `"100"`},
		{`0`, 0, `"0"`},
	} {
		t.Run(c.in, func(t *testing.T) { roundTrip(t, c.in, c.want, c.out) })
	}
}

func TestBytesJSONRejects(t *testing.T) {
	for _, in := range []string{
		`"-1GiB"`, `-5`, `"2XB"`, `"abc"`, `"GiB"`, `""`, `"1e30B"`, `"Inf"`, `"9EiB"`, `true`, `1.5`, `[1]`,
	} {
		t.Run(in, func(t *testing.T) {
			var b Bytes
			if err := json.Unmarshal([]byte(in), &b); err == nil {
				t.Fatalf("decode %s: got %d, want an error", in, int64(b))
			}
		})
	}
}

func TestParseBytesNaN(t *testing.T) {
	for _, in := range []string{"NaN", "nan", "NaNGiB"} {
		if b, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, nil; want an error", in, int64(b))
		}
	}
}

func TestDurationJSON(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Duration
		out  string
	}{
		{`"10m"`, Duration(10 * time.Minute), `"10m0s"`},
		{`"90s"`, Duration(90 * time.Second), `"1m30s"`},
		{`"1h30m"`, Duration(90 * time.Minute), `"1h30m0s"`},
		{`90`, Duration(90 * time.Second), `"1m30s"`},
		{`1.5`, Duration(1500 * time.Millisecond), `"1.5s"`},
		{`0`, 0, `"0s"`},
		{`"0s"`, 0, `"0s"`},
	} {
		t.Run(c.in, func(t *testing.T) { roundTrip(t, c.in, c.want, c.out) })
	}
}

func TestDurationJSONRejects(t *testing.T) {
	for _, in := range []string{`"-5m"`, `-1`, `"10 minutes"`, `"10"`, `""`, `true`, `["10m"]`} {
		t.Run(in, func(t *testing.T) {
			var d Duration
			if err := json.Unmarshal([]byte(in), &d); err == nil {
				t.Fatalf("decode %s: got %v, want an error", in, time.Duration(d))
			}
		})
	}
}

func TestDurationJSONOverflow(t *testing.T) {
	for _, in := range []string{`1e300`, `1e11`} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("decode %s: got %v, nil; want an error", in, time.Duration(d))
		}
	}
}

func TestSpecJSONRoundTrip(t *testing.T) {
	full := `{"requests":{"rate":"60/min","burst":10},"tokens_rate":"10000/min","tokens":["500000/day","10000000/month"],` +
		`"gpu_seconds":"7200/month","cost":"$50/month","concurrency":2,"memory_per_run":"2GiB","run_timeout":"10m0s",` +
		`"max_steps":25,"max_tokens_per_call":4096,"models":["gpt-4o-mini","llama3"],"on_outage":"deny"}`
	s := spec(t, full)
	want := Spec{
		Requests:         &RateSpec{Limit: 60, Period: time.Minute, Burst: 10},
		TokensRate:       &RateSpec{Limit: 10000, Period: time.Minute},
		Tokens:           Budgets{{Amount: 500000, Window: quota.WindowDay}, {Amount: 10000000, Window: quota.WindowMonth}},
		GPUSeconds:       &Budget{Amount: 7200, Window: quota.WindowMonth},
		Cost:             &Budget{Amount: 50_000_000, Window: quota.WindowMonth, Money: true},
		Concurrency:      ptr[int64](2),
		MemoryPerRun:     ptr(Bytes(2 << 30)),
		RunTimeout:       ptr(Duration(10 * time.Minute)),
		MaxSteps:         ptr[int64](25),
		MaxTokensPerCall: ptr[int64](4096),
		Models:           []string{"gpt-4o-mini", "llama3"},
		OnOutage:         quota.OutageDeny,
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("decode: got %+v, want %+v", s, want)
	}
	if got := specJSON(t, s); got != full {
		t.Fatalf("encode: got %s, want %s", got, full)
	}
	if err := s.Validate("limits."); err != nil {
		t.Fatalf("Validate = %v, want nil", err)
	}
	if s.IsZero() {
		t.Fatalf("IsZero of a full spec: got true, want false")
	}
	if got := (&Spec{}).IsZero(); !got {
		t.Fatalf("IsZero of the empty spec: got false, want true")
	}
	if got := specJSON(t, Spec{}); got != "{}" {
		t.Fatalf("encode empty spec: got %s, want {}", got)
	}
}

func TestSpecJSONRejects(t *testing.T) {
	for _, c := range []struct{ in, field string }{
		{`{"tokns":"5/day"}`, "limits.tokns"},
		{`{"requests":"10/min","Requests":"5/min"}`, "limits.Requests"},
		{`{"concurrency":"two"}`, "limits.concurrency"},
		{`{"concurrency":1.5}`, "limits.concurrency"},
		{`{"requests":"10/fortnight"}`, "limits.requests"},
		{`{"requests":"-5/min"}`, "limits.requests"},
		{`{"requests":{"rate":"60/min","bust":10}}`, "limits.requests"},
		{`{"tokens_rate":"abc/min"}`, "limits.tokens_rate"},
		{`{"tokens":"5/week"}`, "limits.tokens"},
		{`{"tokens":["5/day","abc/month"]}`, "limits.tokens"},
		{`{"gpu_seconds":"-5/month"}`, "limits.gpu_seconds"},
		{`{"cost":"$abc/month"}`, "limits.cost"},
		{`{"memory_per_run":"2XB"}`, "limits.memory_per_run"},
		{`{"run_timeout":"-10m"}`, "limits.run_timeout"},
		{`{"models":"gpt-4o"}`, "limits.models"},
		{`{"on_outage":1}`, "limits.on_outage"},
		{`[]`, "limits"},
		{`"60/min"`, "limits"},
	} {
		t.Run(c.in, func(t *testing.T) {
			var s Spec
			wantField(t, json.Unmarshal([]byte(c.in), &s), errs.Invalid, c.field)
		})
	}
}

func TestSpecValidate(t *testing.T) {
	for _, c := range []struct {
		name  string
		spec  string
		field string // "" when valid
	}{
		{"empty", `{}`, ""},
		{"day and month tokens", `{"tokens":["5/day","6/month"]}`, ""},
		{"gpu per month", `{"gpu_seconds":"0/month"}`, ""},
		{"cost per month", `{"cost":"$50/month"}`, ""},
		{"zero concurrency", `{"concurrency":0}`, ""},
		{"on_outage local", `{"on_outage":"local"}`, ""},
		{"on_outage deny", `{"on_outage":"deny"}`, ""},
		{"gpu per day", `{"gpu_seconds":"3600/day"}`, "limits.gpu_seconds"},
		{"cost per day", `{"cost":"$5/day"}`, "limits.cost"},
		{"two day budgets", `{"tokens":["5/day","6/day"]}`, "limits.tokens"},
		{"two month budgets", `{"tokens":["5/month","6/d","7/mo"]}`, "limits.tokens"},
		{"on_outage unknown", `{"on_outage":"open"}`, "limits.on_outage"},
		{"negative concurrency", `{"concurrency":-1}`, "limits.concurrency"},
		{"negative max_steps", `{"max_steps":-1}`, "limits.max_steps"},
		{"negative max_tokens_per_call", `{"max_tokens_per_call":-5}`, "limits.max_tokens_per_call"},
		{"empty model name", `{"models":["gpt-4o",""]}`, "limits.models[1]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := spec(t, c.spec)
			err := s.Validate("limits.")
			if c.field == "" {
				if err != nil {
					t.Fatalf("Validate(%s) = %v, want nil", c.spec, err)
				}
				return
			}
			wantField(t, err, errs.Invalid, c.field)
		})
	}
	// The prefix names where the spec sits.
	s := spec(t, `{"gpu_seconds":"1/day"}`)
	wantField(t, s.Validate("plans.free.limits."), errs.Invalid, "plans.free.limits.gpu_seconds")
}

func TestSpecLimits(t *testing.T) {
	bound := func(t *testing.T, name string, b quota.Bound, want int64, wantSet bool) {
		t.Helper()
		if got, ok := b.Max(); got != want || ok != wantSet {
			t.Errorf("%s: got Max() = %d, %v, want %d, %v", name, got, ok, want, wantSet)
		}
	}
	t.Run("unset is unlimited", func(t *testing.T) {
		l := (&Spec{}).Limits()
		for name, b := range map[string]quota.Bound{"tokens day": l.TokensDay, "tokens month": l.TokensMonth,
			"gpu": l.GPUMillisMonth, "cost": l.CostMicrosMonth, "concurrency": l.Concurrency} {
			bound(t, name, b, 0, false)
		}
		if !l.Requests.IsZero() || !l.TokensRate.IsZero() {
			t.Errorf("rates: got %+v and %+v, want zero rates (unlimited)", l.Requests, l.TokensRate)
		}
		if l.Caps != (quota.Caps{}) {
			t.Errorf("caps: got %+v, want none", l.Caps)
		}
	})
	t.Run("zero is a real limit", func(t *testing.T) {
		s := spec(t, `{"gpu_seconds":"0/month","tokens":"0/day","cost":"$0/month","concurrency":0,"requests":"0/min"}`)
		l := s.Limits()
		bound(t, "gpu", l.GPUMillisMonth, 0, true)
		bound(t, "tokens day", l.TokensDay, 0, true)
		bound(t, "tokens month", l.TokensMonth, 0, false)
		bound(t, "cost", l.CostMicrosMonth, 0, true)
		bound(t, "concurrency", l.Concurrency, 0, true)
		if l.Requests.IsZero() {
			t.Errorf("requests 0/min: got the zero rate (unlimited), want a rate admitting nothing")
		}
	})
	t.Run("conversion", func(t *testing.T) {
		s := spec(t, `{"requests":{"rate":"60/min","burst":10},"tokens_rate":"1000/s","tokens":["500000/day","9000000/month"],`+
			`"gpu_seconds":"7200/month","cost":"$50.5/month","concurrency":3,"memory_per_run":"2GiB","run_timeout":"10m",`+
			`"max_steps":25,"max_tokens_per_call":4096,"models":["m1"],"on_outage":"local"}`)
		l := s.Limits()
		bound(t, "tokens day", l.TokensDay, 500000, true)
		bound(t, "tokens month", l.TokensMonth, 9000000, true)
		bound(t, "gpu millis", l.GPUMillisMonth, 7_200_000, true)
		bound(t, "cost micros", l.CostMicrosMonth, 50_500_000, true)
		bound(t, "concurrency", l.Concurrency, 3, true)
		if want := (quota.Rate{Limit: 60, Period: time.Minute, Burst: 10}); l.Requests != want {
			t.Errorf("requests: got %+v, want %+v", l.Requests, want)
		}
		if want := (quota.Rate{Limit: 1000, Period: time.Second}); l.TokensRate != want {
			t.Errorf("tokens_rate: got %+v, want %+v", l.TokensRate, want)
		}
		if want := (quota.Caps{MemoryPerRun: 2 << 30, RunTimeout: 10 * time.Minute, MaxSteps: 25, MaxTokensPerCall: 4096}); l.Caps != want {
			t.Errorf("caps: got %+v, want %+v", l.Caps, want)
		}
		if !reflect.DeepEqual(l.Models, []string{"m1"}) || l.OnOutage != quota.OutageLocal {
			t.Errorf("models, on_outage: got %v, %q, want [m1], local", l.Models, l.OnOutage)
		}
		if err := l.Validate(); err != nil {
			t.Errorf("quota.Limits.Validate = %v, want nil", err)
		}
	})
}

func TestSpecLimitsHugeGPUSeconds(t *testing.T) {
	s := spec(t, `{"gpu_seconds":"9223372036854775807/month"}`)
	l := s.Limits()
	if got, ok := l.GPUMillisMonth.Max(); !ok || got < math.MaxInt64/1000 {
		t.Fatalf("gpu millis: got %d, %v, want at least %d, true", got, ok, int64(math.MaxInt64/1000))
	}
}

func TestOverlay(t *testing.T) {
	plan := `{"requests":"10/min","tokens":["100000/day","1000000/month"],"concurrency":1,"gpu_seconds":"0/month","models":["small"]}`
	for _, c := range []struct {
		name, base, over, want string
	}{
		{"nothing over", plan, `{}`, plan},
		{"nothing under", `{}`, `{"concurrency":2}`, `{"concurrency":2}`},
		{"one field replaced", plan, `{"concurrency":2}`,
			`{"requests":"10/min","tokens":["100000/day","1000000/month"],"gpu_seconds":"0/month","concurrency":2,"models":["small"]}`},
		{"day tokens replaced, month kept", plan, `{"tokens":"500000/day"}`,
			`{"requests":"10/min","tokens":["500000/day","1000000/month"],"gpu_seconds":"0/month","concurrency":1,"models":["small"]}`},
		{"month tokens added to day", `{"tokens":"100/day"}`, `{"tokens":"3000/month"}`, `{"tokens":["100/day","3000/month"]}`},
		{"tokens ordered day then month", `{"tokens":"3000/month"}`, `{"tokens":"100/day"}`, `{"tokens":["100/day","3000/month"]}`},
		{"every field replaced", plan,
			`{"requests":{"rate":"1/s","burst":5},"tokens_rate":"9/min","tokens":["1/day","2/month"],"gpu_seconds":"9/month","cost":"$1/month",` +
				`"concurrency":9,"memory_per_run":"1GiB","run_timeout":"1m","max_steps":9,"max_tokens_per_call":9,"models":["big"],"on_outage":"deny"}`,
			`{"requests":{"rate":"1/s","burst":5},"tokens_rate":"9/min","tokens":["1/day","2/month"],"gpu_seconds":"9/month","cost":"$1/month",` +
				`"concurrency":9,"memory_per_run":"1GiB","run_timeout":"1m0s","max_steps":9,"max_tokens_per_call":9,"models":["big"],"on_outage":"deny"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := spec(t, c.base)
			got := overlay(base, spec(t, c.over))
			if g, w := specJSON(t, got), specJSON(t, spec(t, c.want)); g != w {
				t.Fatalf("got %s, want %s", g, w)
			}
			if g, w := specJSON(t, base), specJSON(t, spec(t, c.base)); g != w {
				t.Fatalf("overlay changed its base: got %s, want %s", g, w)
			}
		})
	}
}

func TestRaise(t *testing.T) {
	for _, c := range []struct {
		name, base, grant, want string
	}{
		{"adds to tokens of the same window", `{"tokens":["100000/day","1000000/month"]}`, `{"tokens":"50000/day"}`,
			`{"tokens":["150000/day","1000000/month"]}`},
		{"adds to both windows", `{"tokens":["100/day","1000/month"]}`, `{"tokens":["1/day","2/month"]}`, `{"tokens":["101/day","1002/month"]}`},
		{"no window of that kind", `{"tokens":"100/day"}`, `{"tokens":"5000/month"}`, `{"tokens":"100/day"}`},
		{"concurrency", `{"concurrency":1}`, `{"concurrency":2}`, `{"concurrency":3}`},
		{"gpu seconds", `{"gpu_seconds":"7200/month"}`, `{"gpu_seconds":"3600/month"}`, `{"gpu_seconds":"10800/month"}`},
		{"gpu seconds from zero", `{"gpu_seconds":"0/month"}`, `{"gpu_seconds":"60/month"}`, `{"gpu_seconds":"60/month"}`},
		{"cost", `{"cost":"$50/month"}`, `{"cost":"$10.5/month"}`, `{"cost":"$60.5/month"}`},
		{"requests same period", `{"requests":"10/min"}`, `{"requests":"5/min"}`, `{"requests":"15/min"}`},
		{"requests per second onto per minute", `{"requests":"10/min"}`, `{"requests":"1/s"}`, `{"requests":"70/min"}`},
		{"requests per hour onto per minute", `{"requests":"60/min"}`, `{"requests":"120/hour"}`, `{"requests":"62/min"}`},
		{"requests keep burst", `{"requests":{"rate":"10/min","burst":4}}`, `{"requests":"10/min"}`, `{"requests":{"rate":"20/min","burst":4}}`},
		{"tokens rate", `{"tokens_rate":"1000/min"}`, `{"tokens_rate":"60000/hour"}`, `{"tokens_rate":"2000/min"}`},
		{"never creates tokens", `{"concurrency":1}`, `{"tokens":"50000/day"}`, `{"concurrency":1}`},
		{"never creates concurrency", `{}`, `{"concurrency":5}`, `{}`},
		{"never creates requests", `{"tokens":"1/day"}`, `{"requests":"5/min"}`, `{"tokens":"1/day"}`},
		{"never creates gpu or cost", `{}`, `{"gpu_seconds":"5/month","cost":"$5/month"}`, `{}`},
		{"other fields kept", `{"concurrency":1,"models":["m"],"memory_per_run":"1GiB"}`, `{"concurrency":1}`,
			`{"concurrency":2,"memory_per_run":"1GiB","models":["m"]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := spec(t, c.base)
			got := raise(base, spec(t, c.grant))
			if g, w := specJSON(t, got), specJSON(t, spec(t, c.want)); g != w {
				t.Fatalf("got %s, want %s", g, w)
			}
			if g, w := specJSON(t, base), specJSON(t, spec(t, c.base)); g != w {
				t.Fatalf("raise changed its base: got %s, want %s", g, w)
			}
		})
	}
}

func TestExceeds(t *testing.T) {
	for _, c := range []struct {
		name, child, parent, want string
	}{
		{"both empty", `{}`, `{}`, ""},
		{"parent sets nothing", `{"requests":"1000/s","tokens":"9999999/day","concurrency":99}`, `{}`, ""},
		{"child sets nothing", `{}`, `{"requests":"1/min","tokens":"1/day","concurrency":1}`, ""},
		{"requests above", `{"requests":"120/min"}`, `{"requests":"1/s"}`, "requests"},
		{"requests equal across periods", `{"requests":"60/min"}`, `{"requests":"1/s"}`, ""},
		{"requests below across periods", `{"requests":"3000/hour"}`, `{"requests":"1/s"}`, ""},
		{"requests per second above per minute", `{"requests":"2/s"}`, `{"requests":"100/min"}`, "requests"},
		{"tokens_rate above", `{"tokens_rate":"2000/min"}`, `{"tokens_rate":"1000/min"}`, "tokens_rate"},
		{"day tokens above", `{"tokens":"600000/day"}`, `{"tokens":"500000/day"}`, "tokens"},
		{"day tokens equal", `{"tokens":"500000/day"}`, `{"tokens":"500000/day"}`, ""},
		{"month tokens above", `{"tokens":["1/day","9/month"]}`, `{"tokens":["1/day","8/month"]}`, "tokens"},
		{"day not compared with month", `{"tokens":"600000/day"}`, `{"tokens":"500000/month"}`, ""},
		{"gpu above", `{"gpu_seconds":"1/month"}`, `{"gpu_seconds":"0/month"}`, "gpu_seconds"},
		{"cost above", `{"cost":"$51/month"}`, `{"cost":"$50/month"}`, "cost"},
		{"concurrency above", `{"concurrency":2}`, `{"concurrency":1}`, "concurrency"},
		{"concurrency below", `{"concurrency":1}`, `{"concurrency":2}`, ""},
		{"memory above", `{"memory_per_run":"4GiB"}`, `{"memory_per_run":"2GiB"}`, "memory_per_run"},
		{"run_timeout above", `{"run_timeout":"11m"}`, `{"run_timeout":"10m"}`, "run_timeout"},
		{"max_steps above", `{"max_steps":26}`, `{"max_steps":25}`, "max_steps"},
		{"max_tokens_per_call above", `{"max_tokens_per_call":4097}`, `{"max_tokens_per_call":4096}`, "max_tokens_per_call"},
		{"only the shared dimension compared", `{"concurrency":5,"tokens":"1/day"}`, `{"requests":"1/min","tokens":"2/day"}`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			child, parent := spec(t, c.child), spec(t, c.parent)
			if got := exceeds(&child, &parent); got != c.want {
				t.Fatalf("exceeds(%s, %s) = %q, want %q", c.child, c.parent, got, c.want)
			}
		})
	}
}

func TestParseScope(t *testing.T) {
	for _, c := range []struct {
		in, kind, id string
		ok           bool
	}{
		{"global", KindGlobal, "", true},
		{"tenant/ten_1", KindTenant, "ten_1", true},
		{"department/dep_1", KindDepartment, "dep_1", true},
		{"project/prj_1", KindProject, "prj_1", true},
		{"user/usr_1", KindUser, "usr_1", true},
		{"membership/usr_1@prj_1", KindMembership, "usr_1@prj_1", true},
		{"key/key_1", KindKey, "key_1", true},
		{"key/", "", "", false},
		{"key", "", "", false},
		{"key/a/b", "", "", false},
		{"membership/usr_1", "", "", false},
		{"membership/@prj_1", "", "", false},
		{"tenant/", "", "", false},
		{"tenant", "", "", false},
		{"tenant/a/b", "", "", false},
		{"tenant/a b", "", "", false},
		{"galaxy/x", "", "", false},
		{"", "", "", false},
	} {
		t.Run(c.in, func(t *testing.T) {
			kind, id, err := ParseScope("scope", c.in)
			if !c.ok {
				wantField(t, err, errs.Invalid, "scope")
				return
			}
			if err != nil || kind != c.kind || id != c.id {
				t.Fatalf("ParseScope(%q) = %q, %q, %v, want %q, %q, nil", c.in, kind, id, err, c.kind, c.id)
			}
			if kind != KindMembership && ScopeName(kind, id) != c.in {
				t.Fatalf("ScopeName(%q, %q) = %q, want %q", kind, id, ScopeName(kind, id), c.in)
			}
		})
	}
	if got := MembershipScope("usr_1", "prj_1"); got != "membership/usr_1@prj_1" {
		t.Fatalf("MembershipScope = %q, want membership/usr_1@prj_1", got)
	}
}

func TestGrantActive(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	revoked := now.Add(-time.Minute)
	for _, c := range []struct {
		name string
		g    Grant
		want bool
	}{
		{"before expiry", Grant{ExpiresAt: now.Add(time.Second)}, true},
		{"at expiry", Grant{ExpiresAt: now}, false},
		{"after expiry", Grant{ExpiresAt: now.Add(-time.Second)}, false},
		{"revoked", Grant{ExpiresAt: now.Add(time.Hour), RevokedAt: &revoked}, false},
	} {
		if got := c.g.Active(now); got != c.want {
			t.Errorf("%s: Active = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSpecErrorsInWords: a limit of the wrong shape is refused with its
// field and what it should look like, never with Go's type names.
func TestSpecErrorsInWords(t *testing.T) {
	for _, c := range []struct{ in, field, want string }{
		{`{"tokens":"lots"}`, "limits.tokens", "500000/day"},
		{`{"tokens":5}`, "limits.tokens", "not a number"},
		{`{"tokens":["1000/day", 5]}`, "limits.tokens", "item 2"},
		{`{"concurrency":"five"}`, "limits.concurrency", "a whole number such as 5"},
		{`{"requests":7}`, "limits.requests", `a rate is "60/min"`},
		{`{"models":"gpt-4o"}`, "limits.models", "a list of model names"},
	} {
		var s Spec
		err := json.Unmarshal([]byte(c.in), &s)
		var e *errs.Error
		if !errors.As(err, &e) {
			t.Errorf("%s: got %v, want a field error", c.in, err)
			continue
		}
		if e.Field != c.field || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s: got field %q, %q; want field %q and %q", c.in, e.Field, e.Message, c.field, c.want)
		}
		for _, leak := range []string{"Go value", "policy.", "int64", "[]", "json:"} {
			if strings.Contains(e.Message, leak) {
				t.Errorf("%s: the message %q shows Go internals (%q)", c.in, e.Message, leak)
			}
		}
	}
}
