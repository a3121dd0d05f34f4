package manifest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/keyutil"
)

// Peer is a control-plane node as a manifest names it: its node name and
// its address.
type Peer struct{ Name, Address string }

// AdvertiseAnnotation is where kubeadm records the API server's endpoint
// in its manifest.
const AdvertiseAnnotation = "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint"

// ForNode rewrites the API server manifest of the node from for the node
// to: every flag value that is from's address (the manifest's
// --advertise-address when it has one) (--advertise-address,
// --bind-address) becomes to's, etcd servers on the loopback address
// (kubeadm's stacked etcd, which to does not run) become etcd (when
// empty: from's address on the same port), and the probes' host and
// kubeadm's advertise-address annotation follow. It says what changed,
// one phrase per change.
func ForNode(before []byte, from, to Peer, etcd []string) ([]byte, []string, error) {
	if _, err := netip.ParseAddr(to.Address); err != nil {
		return nil, nil, fmt.Errorf("node %s: address %q: want an IP address (the inventory's address)", to.Name, to.Address)
	}
	p, err := Parse(before)
	if err != nil {
		return nil, nil, err
	}
	c, err := Container(p)
	if err != nil {
		return nil, nil, err
	}
	// The source's address is the one its manifest advertises (the
	// inventory's may be another interface, or a name).
	if v, ok := FlagValue(p, "advertise-address"); ok && v != "" {
		from.Address = v
	}
	var changes []string
	for _, list := range [][]string{c.Command, c.Args} {
		for i, a := range list {
			name, v, ok := strings.Cut(a, "=")
			if !ok || !strings.HasPrefix(name, "--") {
				continue
			}
			nv := v
			switch {
			case name == "--etcd-servers":
				nv = etcdForNode(v, from, etcd)
			case v == from.Address:
				nv = to.Address
			}
			if nv != v {
				list[i] = name + "=" + nv
				changes = append(changes, fmt.Sprintf("%s %s -> %s", name, v, nv))
			}
		}
	}
	for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Host == from.Address {
			pr.HTTPGet.Host = to.Address
			changes = append(changes, "probe host "+from.Address+" -> "+to.Address)
		}
	}
	if ep, ok := p.Annotations[AdvertiseAnnotation]; ok {
		if host, port, err := net.SplitHostPort(ep); err == nil && host == from.Address {
			p.Annotations[AdvertiseAnnotation] = net.JoinHostPort(to.Address, port)
			changes = append(changes, "annotation "+AdvertiseAnnotation+" -> "+p.Annotations[AdvertiseAnnotation])
		}
	}
	after, err := Render(p)
	if err != nil {
		return nil, nil, err
	}
	return after, changes, nil
}

// etcdForNode replaces the loopback URLs of an --etcd-servers list.
func etcdForNode(v string, from Peer, etcd []string) string {
	var out []string
	add := func(u string) {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	for _, s := range strings.Split(v, ",") {
		u, err := url.Parse(s)
		if err != nil || !isLoopback(u.Hostname()) {
			add(s)
			continue
		}
		if len(etcd) > 0 {
			for _, e := range etcd {
				add(e)
			}
			continue
		}
		u.Host = net.JoinHostPort(from.Address, u.Port())
		add(u.String())
	}
	return strings.Join(out, ",")
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Covers says whether the serving certificate (PEM) is valid for the
// address, as a client connecting to it checks.
func Covers(certPEM []byte, addr string) (bool, error) {
	c, err := firstCert(certPEM)
	if err != nil {
		return false, err
	}
	return c.VerifyHostname(addr) == nil, nil
}

// SignedBy says whether the certificate (PEM) was signed by the CA
// certificate (PEM).
func SignedBy(certPEM, caPEM []byte) bool {
	c, err := firstCert(certPEM)
	if err != nil {
		return false
	}
	ca, err := firstCert(caPEM)
	if err != nil {
		return false
	}
	return c.CheckSignatureFrom(ca) == nil
}

func firstCert(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("no certificate in the PEM data")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// MintServing makes the serving certificate of the node to from the one
// of the node from: the same subject and names with from's name and
// address replaced by to's (added when from's are not in it), a new key
// of the same type, signed by the CA (its certificate and key, PEM), valid
// for a year or until the CA expires. It returns the certificate and the
// key in PEM.
func MintServing(certPEM, caPEM, caKeyPEM []byte, from, to Peer, now time.Time) ([]byte, []byte, error) {
	old, err := firstCert(certPEM)
	if err != nil {
		return nil, nil, err
	}
	ca, err := firstCert(caPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA: %w", err)
	}
	if err := old.CheckSignatureFrom(ca); err != nil {
		return nil, nil, fmt.Errorf("the CA %q did not sign the serving certificate: %w", ca.Subject.CommonName, err)
	}
	k, err := keyutil.ParsePrivateKeyPEM(caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	caKey, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("CA key: cannot sign")
	}
	if !publicKeysEqual(caKey.Public(), ca.PublicKey) {
		return nil, nil, fmt.Errorf("CA key: not the key of the CA certificate %q", ca.Subject.CommonName)
	}
	var key crypto.Signer
	switch pub := old.PublicKey.(type) {
	case *rsa.PublicKey:
		key, err = rsa.GenerateKey(rand.Reader, max(pub.N.BitLen(), 2048))
	case *ecdsa.PublicKey:
		key, err = ecdsa.GenerateKey(pub.Curve, rand.Reader)
	case ed25519.PublicKey:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, nil, fmt.Errorf("serving certificate: key type %T", pub)
	}
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	dns := replaceOrAdd(old.DNSNames, from.Name, to.Name)
	toIP := net.ParseIP(to.Address)
	var ips []net.IP
	replaced := false
	for _, ip := range old.IPAddresses {
		if ip.Equal(net.ParseIP(from.Address)) {
			ip, replaced = toIP, true
		}
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	if !replaced && !slices.ContainsFunc(ips, toIP.Equal) {
		ips = append(ips, toIP)
	}
	notAfter := now.Add(365 * 24 * time.Hour)
	if ca.NotAfter.Before(notAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      old.Subject,
		DNSNames:     dns,
		IPAddresses:  ips,
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, ok := key.(ed25519.PrivateKey); ok {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func replaceOrAdd(names []string, from, to string) []string {
	out := slices.Clone(names)
	if i := slices.Index(out, from); i >= 0 {
		out[i] = to
	} else if !slices.Contains(out, to) {
		out = append(out, to)
	}
	return slices.Compact(out)
}
