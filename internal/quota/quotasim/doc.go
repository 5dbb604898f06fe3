// Package quotasim owns the deterministic simulation of a multi-instance
// deployment of a quota engine: N instances over one shared store whose
// faults are injected, many clients, and an oracle that checks every
// admission against the limits.
package quotasim
