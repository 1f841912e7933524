package kube

import "regexp"

var (
	identRE = regexp.MustCompile(`^[A-Za-z0-9_.:@/*-]{1,253}$`)
	nameRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// identOK accepts an Istio principal (cluster.local/ns/x/sa/y, or * forms).
func identOK(s string) bool { return identRE.MatchString(s) }

// nameOK accepts a DNS-1123 label (a namespace name).
func nameOK(s string) bool { return len(s) <= 63 && nameRE.MatchString(s) }
