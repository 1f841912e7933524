package classify

import "strings"

// OCSF severity ids.
const (
	SevUnknown       = 0
	SevInformational = 1
	SevLow           = 2
	SevMedium        = 3
	SevHigh          = 4
	SevCritical      = 5
	SevFatal         = 6
)

// SeverityFromWord maps the severity words tools use (Falco priorities,
// Alertmanager severity labels, syslog levels) to an OCSF severity id; 0
// when the word is unknown.
func SeverityFromWord(w string) int {
	switch strings.ToLower(strings.TrimSpace(w)) {
	case "emergency", "emerg", "alert", "fatal", "panic", "disaster":
		return SevFatal
	case "critical", "crit", "p0", "page", "severe":
		return SevCritical
	case "error", "err", "high", "major", "p1":
		return SevHigh
	case "warning", "warn", "medium", "moderate", "average", "p2":
		return SevMedium
	case "notice", "low", "minor", "p3":
		return SevLow
	case "informational", "info", "information", "debug", "none", "ok", "p4", "p5":
		return SevInformational
	}
	return SevUnknown
}

// keywordRules are tried in order against a lower-cased rule name or
// message: the first rule any of whose words appears wins. More specific
// phrases come first ("dns tunnel" before "dns", "brute" before "login").
var keywordRules = []struct {
	typ   string
	words []string
}{
	{DNSTunneling, []string{"dns tunnel", "dnstunnel", "dns_tunnel", "dns-tunnel", "dnsdataexfiltration", "dns exfil", "dns_exfil", "iodine", "dnscat"}},
	{DataExfiltration, []string{"exfiltrat", "exfil", "data_exfil", "data theft", "s3 public", "bucket public", "publicly accessible"}},
	{CryptoMining, []string{"crypto min", "cryptomin", "crypto_min", "coinmin", "miner", "mining", "stratum", "bitcoin", "monero", "xmrig", "cryptocurrency"}},
	{CommandAndControl, []string{"c2 ", "c&c", "command and control", "command_and_control", "c2_", "backdoor", "dga", "reverse shell", "beacon"}},
	{Malware, []string{"malware", "trojan", "virus", "ransomware", "rootkit", "malicious file", "maliciousfile", "webshell", "web shell", "drop and execute", "dropper"}},
	{BruteForce, []string{"brute", "bruteforce", "-bf", "_bf", "password spray", "credential stuffing", "too many failed", "failed logins", "many failed"}},
	{PortScan, []string{"port scan", "portscan", "port-scan", "port_scan", "portprobe", "port probe", "portsweep", "port sweep", "nmap"}},
	{DenialOfService, []string{"ddos", "dos attack", "denial of service", "flood", "denialofservice"}},
	{PrivilegeEscalation, []string{"privilege escalation", "privesc", "privilege_escalation", "privileged container", "privileged pod", "cluster-admin", "setuid", "sudo", "escalat", "ptrace", "change thread namespace", "container escape"}},
	{CredentialCompromise, []string{"credential", "sensitive file", "private key", "password", "shadow", "token theft", "secret access", "access key", "instancecredential", "compromised"}},
	{DefenseEvasion, []string{"clear log", "delete or rename shell history", "shell history", "disable logging", "stoplogging", "stop logging", "tamper", "evasion", "fileless", "memfd", "delete trail", "log deletion"}},
	{Persistence, []string{"persistence", "cron", "write below binary", "binary dir", "modify binary", "below etc", "backdoor user", "authorized_keys", "startup", "systemd unit"}},
	{Exploitation, []string{"cve-", "cve_", "exploit", "rce", "sqli", "sql injection", "xss", "log4j", "log4shell", "path traversal", "lfi", "rfi", "injection"}},
	{LateralMovement, []string{"lateral", "ssh connection", "disallowed ssh", "inter-service", "east-west"}},
	{Execution, []string{"shell", "exec", "terminal", "spawned", "netcat", "interactive", "attach", "run shell", "launch"}},
	{Reconnaissance, []string{"recon", "discovery", "scan", "probing", "probe", "crawl", "enumerat", "sensitive-files", "bad-user-agent", "bad user agent", "network tool", "packet socket", "pentest", "kali", "parrot"}},
	{FailedAuthentication, []string{"failed login", "failed auth", "authentication fail", "login fail", "auth fail", "invalid user", "unauthorized login", "login failure"}},
	{SuspiciousConnection, []string{"connection", "outbound", "inbound", "contact", "unexpected", "suspicious ip", "malicious ip", "maliciousip", "tor", "blocklist", "blacklist", "threat intel"}},
	{PolicyViolation, []string{"policy", "disallowed", "not allowed", "unauthorized", "forbidden", "violation", "drift", "non-compliant", "noncompliant"}},
	{Anomaly, []string{"anomal", "unusual", "spike", "abnormal", "high traffic", "traffic volume"}},
	{Informational, []string{"heartbeat", "watchdog", "deadmansswitch", "dead man", "test alert", "informational"}},
}

// FromKeywords infers a type from free text (a rule name, a scenario, an
// alert name), or "" when nothing matches. Text is compared lower-cased.
func FromKeywords(texts ...string) string {
	for _, t := range texts {
		if t == "" {
			continue
		}
		s := strings.ToLower(t)
		// Word-ish matching for short tokens that are common substrings.
		padded := " " + s + " "
		for _, r := range keywordRules {
			for _, w := range r.words {
				if w == "tor" || w == "rce" || w == "dga" || w == "lfi" || w == "rfi" || w == "xss" {
					if containsWord(padded, w) {
						return r.typ
					}
					continue
				}
				if strings.Contains(s, w) {
					return r.typ
				}
			}
		}
	}
	return ""
}

func containsWord(padded, w string) bool {
	for i := 0; ; {
		j := strings.Index(padded[i:], w)
		if j < 0 {
			return false
		}
		j += i
		before, after := padded[j-1], byte(' ')
		if j+len(w) < len(padded) {
			after = padded[j+len(w)]
		}
		if !isAlnum(before) && !isAlnum(after) {
			return true
		}
		i = j + 1
	}
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}

// mitreTags maps MITRE ATT&CK tactic tags (as Falco spells them) to types,
// in the order they are tried when an event carries several.
var mitreTags = []struct{ tag, typ string }{
	{"mitre_exfiltration", DataExfiltration},
	{"mitre_command_and_control", CommandAndControl},
	{"mitre_credential_access", CredentialCompromise},
	{"mitre_privilege_escalation", PrivilegeEscalation},
	{"mitre_defense_evasion", DefenseEvasion},
	{"mitre_persistence", Persistence},
	{"mitre_lateral_movement", LateralMovement},
	{"mitre_initial_access", UnauthorizedAccess},
	{"mitre_execution", Execution},
	{"mitre_impact", Anomaly},
	{"mitre_collection", DataExfiltration},
	{"mitre_discovery", Reconnaissance},
	{"mitre_reconnaissance", Reconnaissance},
}

// FromMITRETags infers a type from MITRE tactic tags, or "".
func FromMITRETags(tags []string) string {
	set := make(map[string]bool, len(tags))
	for _, t := range tags {
		set[strings.ToLower(strings.TrimSpace(t))] = true
	}
	for _, m := range mitreTags {
		if set[m.tag] {
			return m.typ
		}
	}
	return ""
}
