package usage

import (
	"strconv"
	"time"
)

// HistoryQuery asks the ledger for one scope's use per day (and model).
type HistoryQuery struct {
	// Scope is the scope whose events are summed: an event counts when
	// its chain (Event.Scopes) holds it.
	Scope string
	// TenantID narrows the read to one tenant's events ("" for all: the
	// global scope, or a platform admin's own user scope). It is a filter
	// the index serves, never a widening: Scope alone decides what counts.
	TenantID string
	// From and To are the first and last day ("2006-01-02"), both
	// included, of the events' own days: the day each event was recorded
	// in, in its tenant's time zone then (what the roll-ups and the quota
	// windows used), or in UTC when UTC is set (the global scope, which
	// counts in UTC).
	From, To string
	UTC      bool
	// ByModel splits each day by the events' model.
	ByModel bool
	// Limit bounds the rows read (0: no bound).
	Limit int
}

// HistoryRow is the use of one scope in one day (and of one model, when
// asked by model), summed from the ledger.
type HistoryRow struct {
	Period       string // "2006-01-02", or "2006-01" once by month
	Model        string
	Requests     int64
	InputTokens  int64
	OutputTokens int64
	GPUMillis    int64
	CostMicros   int64
}

// Tokens is input plus output tokens.
func (r *HistoryRow) Tokens() int64 { return r.InputTokens + r.OutputTokens }

// Add adds o's use to r.
func (r *HistoryRow) Add(o *HistoryRow) {
	r.Requests += o.Requests
	r.InputTokens += o.InputTokens
	r.OutputTokens += o.OutputTokens
	r.GPUMillis += o.GPUMillis
	r.CostMicros += o.CostMicros
}

// ByMonth folds day rows (sorted by period, then model) into month rows,
// keeping the order: a month is the sum of its days, as a month roll-up is.
func ByMonth(days []HistoryRow) []HistoryRow {
	var out []HistoryRow
	index := map[[2]string]int{}
	for i := range days {
		d := &days[i]
		k := [2]string{d.Period[:min(len(d.Period), len("2006-01"))], d.Model}
		j, ok := index[k]
		if !ok {
			j = len(out)
			index[k] = j
			out = append(out, HistoryRow{Period: k[0], Model: d.Model})
		}
		out[j].Add(d)
	}
	return out
}

// Total sums rows.
func Total(rows []HistoryRow) HistoryRow {
	var t HistoryRow
	for i := range rows {
		t.Add(&rows[i])
	}
	return t
}

// Decimal writes v/10^places as an exact decimal with no trailing zeros
// ("1.5", "0.000123", "42"): GPU milliseconds as seconds and micro-USD as
// USD, with no float rounding between the ledger and a bill.
func Decimal(v int64, places int) string {
	neg := v < 0
	u := uint64(v)
	if neg {
		u = uint64(-v) // -MinInt64 wraps to itself, which as uint64 is right
	}
	scale := uint64(1)
	for range places {
		scale *= 10
	}
	s := strconv.FormatUint(u/scale, 10)
	if frac := u % scale; frac != 0 {
		f := strconv.FormatUint(frac, 10)
		for len(f) < places {
			f = "0" + f
		}
		for f[len(f)-1] == '0' {
			f = f[:len(f)-1]
		}
		s += "." + f
	}
	if neg {
		s = "-" + s
	}
	return s
}

// DayOfUnixDay names the UTC day number n (days since 1970-01-01).
func DayOfUnixDay(n int64) string {
	return time.Unix(n*86400, 0).UTC().Format("2006-01-02")
}
