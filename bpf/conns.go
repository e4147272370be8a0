package bpf

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Connection directions and peer classes (enum conn_dir, enum peer_class
// in probes.bpf.c), as exported in labels.
const (
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"

	PeerRouter   = "router"   // inbound from a connection the serve process (the router) opened
	PeerLoopback = "loopback" // any other loopback peer
	PeerDNS      = "dns"      // remote port 53
	PeerOther    = "other"
)

var (
	directions  = [2]string{DirectionInbound, DirectionOutbound}
	peerClasses = [4]string{PeerRouter, PeerLoopback, PeerDNS, PeerOther}
)

// maxUnexpected is how many unexpected connections are kept per revision
// for the admin view.
const maxUnexpected = 16

// connEvent is a decoded struct conn_payload.
type connEvent struct {
	rx, tx    uint64
	dur       time.Duration
	peer      netip.AddrPort // zero for a Unix socket
	unix      bool           // a connection to the instance's Unix socket: no address, no sent bytes
	direction string
	peerClass string
}

func decodeConn(b []byte) (connEvent, bool) {
	var c connEvent
	c.rx = binary.LittleEndian.Uint64(b[0:])
	c.tx = binary.LittleEndian.Uint64(b[8:])
	c.dur = time.Duration(binary.LittleEndian.Uint64(b[16:]))
	port := binary.LittleEndian.Uint16(b[40:])
	family := binary.LittleEndian.Uint16(b[42:])
	dir, class := b[44], b[45]
	if int(dir) >= len(directions) || int(class) >= len(peerClasses) {
		return c, false
	}
	c.direction, c.peerClass = directions[dir], peerClasses[class]
	var addr netip.Addr
	switch family {
	case 2: // AF_INET
		addr = netip.AddrFrom4([4]byte(b[24:28]))
	case 10: // AF_INET6
		addr = netip.AddrFrom16([16]byte(b[24:40])).Unmap()
	case 1: // AF_UNIX
		c.unix = true
		return c, true
	default:
		return c, false
	}
	c.peer = netip.AddrPortFrom(addr, port)
	return c, true
}

// unexpected reports whether a connection breaks the instance's expected
// behaviour: an inference instance answers requests and opens nothing but
// DNS lookups.
func (c connEvent) unexpected() bool {
	return c.direction == DirectionOutbound && c.peerClass != PeerDNS
}

// UnexpectedConnection is an outbound connection an instance opened to
// something other than DNS, as the admin API shows it.
type UnexpectedConnection struct {
	Time     time.Time `json:"time"`
	PID      int       `json:"pid"`
	Function string    `json:"function"`
	Revision string    `json:"revision"`
	Peer     string    `json:"peer"` // address:port
	Class    string    `json:"peer_class"`
}

func newUnexpected(at time.Time, pid uint32, l labels, c connEvent) UnexpectedConnection {
	peer := netip.AddrPortFrom(c.peer.Addr(), c.peer.Port()).String()
	if c.unix {
		peer = "unix"
	}
	return UnexpectedConnection{Time: at, PID: int(pid), Function: l.function, Revision: l.revision,
		Peer: peer, Class: c.peerClass}
}

// String is the log form of an unexpected connection.
func (u UnexpectedConnection) String() string {
	return u.Function + "/" + u.Revision + " pid " + strconv.Itoa(u.PID) + " -> " + u.Peer
}

// LatestConnections returns the last unexpected connections (newest last)
// of each revision, keyed "function/revision".
func (p *Probes) LatestConnections() map[string][]UnexpectedConnection {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string][]UnexpectedConnection, len(p.lastConns))
	for k, v := range p.lastConns {
		out[k] = slices.Clone(v)
	}
	return out
}
