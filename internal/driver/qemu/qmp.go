package qemu

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmp is a minimal client of QEMU's machine protocol, used to stop a guest
// cleanly and to ask its status.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQMP(socket string) (*qmp, error) {
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return nil, err
	}
	q := &qmp{conn: conn, r: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if _, err := q.execute("qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// execute runs a command and returns its "return" value, skipping events.
func (q *qmp) execute(cmd string) (json.RawMessage, error) {
	q.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(q.conn, `{"execute":%q}`+"\n", cmd); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var msg struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if json.Unmarshal(line, &msg) != nil {
			continue
		}
		if msg.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s", cmd, msg.Error.Desc)
		}
		if msg.Return != nil {
			return msg.Return, nil
		}
	}
}

func (q *qmp) close() { q.conn.Close() }
