// Package leasequota owns the budget-lease engine's Redis lease store.
package leasequota
