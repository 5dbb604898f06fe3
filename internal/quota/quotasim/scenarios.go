package quotasim

import "time"

// FaultFree returns scenarios in which the store is always up and answers
// within the callers' timeout: an engine that charges the shared store
// before it admits must never over-admit in them.
func FaultFree(seed uint64) []Scenario {
	return []Scenario{
		{Name: "calm", Seed: seed, Faults: Faults{Latency: time.Millisecond}},
		{Name: "latency", Seed: seed, Faults: Faults{Latency: 2 * time.Millisecond, SpikeRate: 0.03, Spike: 40 * time.Millisecond,
			Timeout: 100 * time.Millisecond}},
	}
}

// Faulty returns scenarios in which the store fails: timeouts with unknown
// outcomes, outages (refused and hanging), and a restart that loses every
// counter. Issue 10's lease engine must never over-admit in them either.
func Faulty(seed uint64) []Scenario {
	base := Faults{Latency: 2 * time.Millisecond, Timeout: 100 * time.Millisecond, DropRate: 0.3}
	timeouts := base
	timeouts.SpikeRate, timeouts.Spike = 0.02, 150*time.Millisecond
	outage := base
	outage.Outages = []Outage{{At: 3 * time.Minute, For: 5 * time.Second}, {At: 14 * time.Minute, For: 20 * time.Second, Hang: true}}
	empty := base
	empty.Outages = []Outage{{At: 3 * time.Minute, For: 5 * time.Second, Empty: true}}
	return []Scenario{
		{Name: "timeouts", Seed: seed, Faults: timeouts},
		{Name: "outages", Seed: seed, Faults: outage},
		{Name: "empty-restart", Seed: seed, Faults: empty},
	}
}

// Scenarios returns FaultFree and Faulty.
func Scenarios(seed uint64) []Scenario { return append(FaultFree(seed), Faulty(seed)...) }
