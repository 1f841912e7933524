package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// Labels and annotations quell puts on what it creates or changes.
const (
	LabelManagedBy   = "app.kubernetes.io/managed-by"
	ManagedByQuell   = "quell"
	LabelIncident    = "quell.io/incident"
	LabelQuarantine  = "quell.io/quarantine"
	AnnotationKey    = "quell.io/key"
	AnnotationTxn    = "quell.io/txn"
	annotationPrefix = "quell.io/"
)

// hashKey is the stable short hash of an idempotency key; object names and
// label values derive from it so that a retry, a second request or a
// recovered transaction addresses the same objects.
func hashKey(key string, n int) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])[:n]
}

// objectName is the deterministic name of an object quell creates for key.
func objectName(prefix, key string) string { return prefix + "-" + hashKey(key, 12) }

var labelValueBad = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// labelValue makes an arbitrary id (an incident id) a valid label value.
func labelValue(s string) string {
	s = labelValueBad.ReplaceAllString(s, "_")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "_.-")
}

// managedLabels are the labels on every object quell creates.
func managedLabels(incident string) map[string]string {
	l := map[string]string{LabelManagedBy: ManagedByQuell}
	if v := labelValue(incident); v != "" {
		l[LabelIncident] = v
	}
	return l
}

// beforeAnnotation names the annotation in which an action keeps, on the
// object it changed, the state it must restore: a recovered transaction
// whose journal lost the Before finds it there.
func beforeAnnotation(act, key string) string {
	return annotationPrefix + strings.TrimPrefix(strings.ReplaceAll(act, ".", "-"), "kube-") + "-" + hashKey(key, 8)
}
