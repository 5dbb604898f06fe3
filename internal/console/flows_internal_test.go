package console

import (
	"reflect"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/quota"
)

// TestParseDenialReadsWhatDenialWrites: a run's record keeps a denial as
// its Error text; the run page reads it back to say it in words.
func TestParseDenialReadsWhatDenialWrites(t *testing.T) {
	for _, d := range []*quota.Denial{
		{Code: quota.CodeQuotaExceeded, Scope: "project/prj_1", Dimension: quota.DimTokens, Window: quota.WindowMonth, Used: 95000, Limit: 100000, Requested: 6000, RetryAfter: 10*time.Hour + 24*time.Minute},
		{Code: quota.CodeQuotaExceeded, Scope: "tenant/ten_1", Dimension: quota.DimCost, Window: quota.WindowMonth, Used: 1, Limit: 5, Requested: 9},
		{Code: quota.CodeRateLimited, Scope: "user/usr_1", Dimension: quota.DimRequests, Limit: 60, Period: time.Minute, Used: 60, Requested: 1, RetryAfter: 1200 * time.Millisecond},
		{Code: quota.CodeRateLimited, Scope: "membership/usr_1@prj_1", Dimension: quota.DimConcurrency, Limit: 2, Used: 2, Requested: 1, RetryAfter: time.Second},
		{Code: quota.CodeModelNotAllowed, Scope: "project/prj_1", Dimension: quota.DimModel, Model: "gpt-4o"},
	} {
		got := parseDenial("node LanguageModel-1: " + d.Error())
		if !reflect.DeepEqual(got, d) {
			t.Errorf("parseDenial(%q) = %+v, want %+v", d.Error(), got, d)
		}
	}
	if got := parseDenial("the run reached its time limit"); got != nil {
		t.Errorf("parseDenial of a text with no denial = %+v, want nil", got)
	}
}

func TestHottestNodes(t *testing.T) {
	for _, c := range []struct {
		name string
		figs map[string]*nodeFigures
		want []string
	}{
		{"by cost when any cost", map[string]*nodeFigures{"a": {CostMicros: 100, Input: 1}, "b": {CostMicros: 60, Input: 900}, "c": {CostMicros: 40}}, []string{"a", "b"}},
		{"by tokens when free", map[string]*nodeFigures{"a": {Input: 10}, "b": {Output: 30}, "c": {}}, []string{"b"}},
		{"at most three", map[string]*nodeFigures{"a": {Input: 9}, "b": {Input: 9}, "c": {Input: 9}, "d": {Input: 9}}, []string{"a", "b", "c"}},
		{"none that spent nothing", map[string]*nodeFigures{"a": {}, "b": {}}, nil},
	} {
		got := hottest(c.figs)
		var ids []string
		for _, id := range []string{"a", "b", "c", "d"} {
			if got[id] {
				ids = append(ids, id)
			}
		}
		if !reflect.DeepEqual(ids, c.want) {
			t.Errorf("%s: hottest = %v, want %v", c.name, ids, c.want)
		}
	}
}
