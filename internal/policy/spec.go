// Package policy owns who may use how much: limit specs as people write
// them ("10/min", "500000/day", "2GiB"), plans (named templates with a
// priority), per-scope limits and temporary grants, the rule that a child's
// cap may not exceed its parent's, and the resolution of all of that into
// the effective quota.Limits of every scope of a request's chain. It reads
// the tenancy tree; it holds no counters.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/quota"
)

// Spec is a set of limits as written in the API and in policy files. Unset
// fields limit nothing (or, in an override, keep the plan's value).
type Spec struct {
	Requests         *RateSpec `json:"requests,omitempty"`
	TokensRate       *RateSpec `json:"tokens_rate,omitempty"`
	Tokens           Budgets   `json:"tokens,omitempty"`
	GPUSeconds       *Budget   `json:"gpu_seconds,omitempty"`
	Cost             *Budget   `json:"cost,omitempty"`
	Concurrency      *int64    `json:"concurrency,omitempty"`
	MemoryPerRun     *Bytes    `json:"memory_per_run,omitempty"`
	RunTimeout       *Duration `json:"run_timeout,omitempty"`
	MaxSteps         *int64    `json:"max_steps,omitempty"`
	MaxTokensPerCall *int64    `json:"max_tokens_per_call,omitempty"`
	Models           []string  `json:"models,omitempty"`
	OnOutage         string    `json:"on_outage,omitempty"`
}

// UnmarshalJSON decodes a spec field by field, so an error names the limit
// at fault ("limits.tokens") and unknown limits are refused.
func (s *Spec) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return errs.Field(errs.Invalid, "limits", "limits must be an object such as {\"requests\":\"60/min\"}")
	}
	type plain Spec
	var out plain
	for k, v := range raw {
		if !specFields[k] {
			return errs.Field(errs.Invalid, "limits."+k, "unknown limit %q (known: requests, tokens_rate, tokens, gpu_seconds, cost, concurrency, memory_per_run, run_timeout, max_steps, max_tokens_per_call, models, on_outage)", k)
		}
		one, _ := json.Marshal(map[string]json.RawMessage{k: v})
		if err := json.Unmarshal(one, &out); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return errs.Field(errs.Invalid, "limits."+k, "limits.%s must be %s, not %s", k, specExpect[k], te.Value)
			}
			return errs.Field(errs.Invalid, "limits."+k, "limits.%s: %v", k, err)
		}
	}
	*s = Spec(out)
	return nil
}

var specFields = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeOf(Spec{})
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		m[name] = true
	}
	return m
}()

// IsZero reports whether s sets nothing.
func (s *Spec) IsZero() bool {
	b, _ := json.Marshal(s)
	return string(b) == "{}"
}

// Validate checks values that parse but make no sense.
func (s *Spec) Validate(prefix string) error {
	neg := func(field string, v *int64) error {
		if v != nil && *v < 0 {
			return errs.Field(errs.Invalid, prefix+field, "%s must not be negative", prefix+field)
		}
		return nil
	}
	for _, c := range []struct {
		f string
		v *int64
	}{{"concurrency", s.Concurrency}, {"max_steps", s.MaxSteps}, {"max_tokens_per_call", s.MaxTokensPerCall}} {
		if err := neg(c.f, c.v); err != nil {
			return err
		}
	}
	if s.GPUSeconds != nil && s.GPUSeconds.Amount > maxGPUSeconds {
		return errs.Field(errs.Invalid, prefix+"gpu_seconds", "gpu_seconds above %d per month cannot be represented", maxGPUSeconds)
	}
	if s.GPUSeconds != nil && s.GPUSeconds.Window != quota.WindowMonth {
		return errs.Field(errs.Invalid, prefix+"gpu_seconds", "gpu_seconds is a monthly budget: write it as N/month")
	}
	if s.Cost != nil && s.Cost.Window != quota.WindowMonth {
		return errs.Field(errs.Invalid, prefix+"cost", "cost is a monthly budget: write it as $N/month")
	}
	seen := map[quota.Window]bool{}
	for _, b := range s.Tokens {
		if seen[b.Window] {
			return errs.Field(errs.Invalid, prefix+"tokens", "tokens has two %s budgets", b.Window)
		}
		seen[b.Window] = true
	}
	switch s.OnOutage {
	case "", quota.OutageLocal, quota.OutageDeny:
	default:
		return errs.Field(errs.Invalid, prefix+"on_outage", "on_outage %q is not local or deny", s.OnOutage)
	}
	for i, m := range s.Models {
		if m == "" || len(m) > 200 {
			return errs.Field(errs.Invalid, fmt.Sprintf("%smodels[%d]", prefix, i), "model names are 1–200 characters")
		}
	}
	return nil
}

// maxGPUSeconds keeps GPU budgets convertible to milliseconds.
const maxGPUSeconds = math.MaxInt64 / 1000

// ---- rates ----

// RateSpec is a rate: "60/min", "10/30s", or {"rate":"60/min","burst":10}.
type RateSpec struct {
	Limit  int64
	Period time.Duration
	Burst  int64
}

var periodNames = map[string]time.Duration{
	"s": time.Second, "sec": time.Second, "second": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute,
	"h": time.Hour, "hour": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour,
}

func parsePeriod(s string) (time.Duration, bool) {
	if d, ok := periodNames[s]; ok {
		return d, true
	}
	d, err := time.ParseDuration(s)
	return d, err == nil && d > 0
}

func parseRate(s string) (RateSpec, error) {
	n, per, ok := strings.Cut(strings.ReplaceAll(s, " ", ""), "/")
	if !ok {
		return RateSpec{}, fmt.Errorf("%q is not a rate such as 60/min", s)
	}
	limit, err := strconv.ParseInt(n, 10, 64)
	if err != nil || limit < 0 {
		return RateSpec{}, fmt.Errorf("%q: %q is not a whole number", s, n)
	}
	d, ok := parsePeriod(per)
	if !ok {
		return RateSpec{}, fmt.Errorf("%q: period %q is not one of s, min, hour, day or a duration such as 30s", s, per)
	}
	return RateSpec{Limit: limit, Period: d}, nil
}

func formatPeriod(d time.Duration) string {
	switch d {
	case time.Second:
		return "s"
	case time.Minute:
		return "min"
	case time.Hour:
		return "hour"
	case 24 * time.Hour:
		return "day"
	}
	return d.String()
}

// String is the rate as written: "60/min".
func (r RateSpec) String() string { return fmt.Sprintf("%d/%s", r.Limit, formatPeriod(r.Period)) }

// MarshalJSON writes "60/min", or an object when a burst is set.
func (r RateSpec) MarshalJSON() ([]byte, error) {
	if r.Burst == 0 {
		return json.Marshal(r.String())
	}
	return json.Marshal(struct {
		Rate  string `json:"rate"`
		Burst int64  `json:"burst"`
	}{r.String(), r.Burst})
}

// UnmarshalJSON reads "60/min", {"rate":"60/min","burst":10} or
// {"limit":60,"period":"1m","burst":10} (the burst optional in both).
func (r *RateSpec) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := parseRate(s)
		if err != nil {
			return err
		}
		*r = v
		return nil
	}
	var o struct {
		Rate   string `json:"rate"`
		Limit  *int64 `json:"limit"`
		Period string `json:"period"`
		Burst  int64  `json:"burst"`
	}
	const forms = "a rate is \"60/min\", {\"rate\":\"60/min\",\"burst\":10} or {\"limit\":60,\"period\":\"1m\"}"
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return errors.New(forms)
	}
	var v RateSpec
	switch {
	case o.Rate != "" && (o.Limit != nil || o.Period != ""):
		return fmt.Errorf("give rate, or limit and period, not both: %s", forms)
	case o.Limit != nil || o.Period != "":
		d, ok := parsePeriod(o.Period)
		if o.Limit == nil || *o.Limit < 0 || !ok {
			return fmt.Errorf("limit must be a whole number and period one of s, min, hour, day or a duration such as 30s: %s", forms)
		}
		v = RateSpec{Limit: *o.Limit, Period: d}
	default:
		var err error
		if v, err = parseRate(o.Rate); err != nil {
			return err
		}
	}
	if o.Burst < 0 {
		return fmt.Errorf("burst %d must not be negative", o.Burst)
	}
	v.Burst = o.Burst
	*r = v
	return nil
}

func (r *RateSpec) quota() quota.Rate {
	if r == nil {
		return quota.Rate{}
	}
	return quota.Rate{Limit: r.Limit, Period: r.Period, Burst: r.Burst}
}

// perSecond normalises a rate for comparisons between scopes.
func (r *RateSpec) perSecond() float64 { return float64(r.Limit) / r.Period.Seconds() }

// ---- budgets ----

// Budget is an amount per calendar window: "500000/day", "7200/month",
// "$50/month" (cost, held in micro-USD).
type Budget struct {
	Amount int64 // tokens, seconds, or micro-USD for cost
	Window quota.Window
	Money  bool
}

func parseBudget(s string) (Budget, error) {
	n, per, ok := strings.Cut(strings.ReplaceAll(s, " ", ""), "/")
	if !ok {
		return Budget{}, fmt.Errorf("%q is not a budget such as 500000/day or 7200/month", s)
	}
	var b Budget
	switch per {
	case "day", "d":
		b.Window = quota.WindowDay
	case "month", "mo":
		b.Window = quota.WindowMonth
	default:
		return Budget{}, fmt.Errorf("%q: window %q is not day or month", s, per)
	}
	if strings.HasPrefix(n, "$") {
		usd, err := strconv.ParseFloat(strings.TrimPrefix(n, "$"), 64)
		if err != nil || usd < 0 || usd > 1e12 || math.IsNaN(usd) {
			return Budget{}, fmt.Errorf("%q: %q is not an amount of US dollars", s, n)
		}
		b.Amount, b.Money = int64(math.Round(usd*1e6)), true
		return b, nil
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n, "_", ""), 10, 64)
	if err != nil || v < 0 {
		return Budget{}, fmt.Errorf("%q: %q is not a whole number", s, n)
	}
	b.Amount = v
	return b, nil
}

// String is the budget as written.
func (b Budget) String() string {
	if b.Money {
		return fmt.Sprintf("$%s/%s", strconv.FormatFloat(float64(b.Amount)/1e6, 'f', -1, 64), b.Window)
	}
	return fmt.Sprintf("%d/%s", b.Amount, b.Window)
}

// MarshalJSON writes the budget as text.
func (b Budget) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads "500000/day".
func (b *Budget) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("a budget is text such as \"500000/day\"")
	}
	v, err := parseBudget(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Budgets holds a daily and/or a monthly budget: "500000/day" or
// ["500000/day", "10000000/month"].
type Budgets []Budget

// MarshalJSON writes one budget as text, several as a list.
func (bs Budgets) MarshalJSON() ([]byte, error) {
	if len(bs) == 1 {
		return json.Marshal(bs[0])
	}
	return json.Marshal([]Budget(bs))
}

// UnmarshalJSON reads text or a list of texts. An error says what is
// wrong with the budget in words, never in Go's types.
func (bs *Budgets) UnmarshalJSON(data []byte) error {
	var raw any
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("a budget such as \"500000/day\" or a list of them is expected")
	}
	switch v := raw.(type) {
	case string:
		var one Budget
		if err := one.UnmarshalJSON(data); err != nil {
			return err
		}
		*bs = Budgets{one}
		return nil
	case []any:
		var many Budgets
		for i, e := range v {
			b, _ := json.Marshal(e)
			var one Budget
			if err := one.UnmarshalJSON(b); err != nil {
				return fmt.Errorf("item %d: %w", i+1, err)
			}
			many = append(many, one)
		}
		*bs = many
		return nil
	}
	return fmt.Errorf("a budget such as \"500000/day\" or a list of them is expected, not %s", jsonWord(raw))
}

// jsonWord names a decoded JSON value's kind for a person.
func jsonWord(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "true or false"
	case float64:
		return "a number"
	case string:
		return "text"
	case []any:
		return "a list"
	}
	return "an object"
}

// specExpect says, for each limit, what its value looks like.
var specExpect = map[string]string{
	"requests": `a rate such as "60/min"`, "tokens_rate": `a rate such as "100000/min"`,
	"tokens":      `a budget such as "1000000/day" or a list such as ["1000000/day", "20000000/month"]`,
	"gpu_seconds": `a budget such as "7200/month"`, "cost": `a budget in US dollars such as "50/month"`,
	"concurrency": "a whole number such as 5", "memory_per_run": `a size such as "2GiB"`,
	"run_timeout": `a duration such as "10m"`, "max_steps": "a whole number such as 100",
	"max_tokens_per_call": "a whole number such as 4096", "models": `a list of model names such as ["gpt-4o-mini"]`,
	"on_outage": `"local" or "deny"`,
}

func (bs Budgets) get(w quota.Window) *Budget {
	for i := range bs {
		if bs[i].Window == w {
			return &bs[i]
		}
	}
	return nil
}

// ---- sizes and durations ----

// Bytes is a size: 2147483648, "2GiB", "512MB", "64Mi".
type Bytes int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"B", 1},
}

// ParseBytes reads a size with an optional unit.
func ParseBytes(s string) (Bytes, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || !(v >= 0) || v*float64(mult) > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is not a size such as 2GiB or 512MB", s)
	}
	return Bytes(v * float64(mult)), nil
}

// String writes the size with the largest binary unit that divides it.
func (b Bytes) String() string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if int64(b) >= u.m && int64(b)%u.m == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.m, u.s)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalJSON writes the size as text.
func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads a number of bytes or text with a unit.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var n int64
	if err := json.Unmarshal(data, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("a size must not be negative")
		}
		*b = Bytes(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("a size is a number of bytes or text such as \"2GiB\"")
	}
	v, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Duration is a time span written as "10m" or a number of seconds.
type Duration time.Duration

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "10m", "90s" or a number of seconds.
func (d *Duration) UnmarshalJSON(data []byte) error {
	var secs float64
	if err := json.Unmarshal(data, &secs); err == nil {
		if !(secs >= 0) || secs > float64(math.MaxInt64)/float64(time.Second) {
			return fmt.Errorf("a duration must be between 0 and about 292 years")
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("a duration is text such as \"10m\" or a number of seconds")
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration such as 10m or 90s", s)
	}
	*d = Duration(v)
	return nil
}
