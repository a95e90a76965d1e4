// A Go net/http refunds upstream: POST /v1/payments/{id}/refund reads its body with
// encoding/json into a struct (or the form with r.FormValue), and logs what it ran; POST /mcp
// does the same for JSON-RPC messages (a tools/call's name and its recipient).
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
)

// A JSON-RPC message as a Go MCP or JSON-RPC server reads it: encoding/json into a struct,
// members matched to fields without case, the last match winning.
type rpcMsg struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"params"`
}

type payment struct {
	Recipient string `json:"recipient"`
}

type refund struct {
	Amount float64 `json:"amount"`
	To     string  `json:"to"`
}

func main() {
	port, logPath := os.Args[1], os.Args[2]
	var mu sync.Mutex
	logf := func(v map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		f, _ := os.OpenFile(logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		defer f.Close()
		b, _ := json.Marshal(v)
		f.Write(append(b, '\n'))
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		entry := map[string]any{"path": r.URL.Path, "raw": r.URL.RawPath, "method": r.Method, "ct": r.Header.Get("Content-Type")}
		if r.Method == "POST" && len(parts) == 4 && parts[0] == "v1" && parts[1] == "payments" && parts[3] == "refund" {
			entry["view"] = "refund"
			var rf refund
			if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
				rf.To = r.FormValue("to")
				fmt.Sscan(r.FormValue("amount"), &rf.Amount)
			} else if err := json.NewDecoder(r.Body).Decode(&rf); err != nil {
				entry["error"] = err.Error()
				logf(entry)
				http.Error(w, err.Error(), 400)
				return
			}
			entry["amount"], entry["to"] = rf.Amount, rf.To
			logf(entry)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"refunded":%v,"to":%q}`, rf.Amount, rf.To)
			return
		}
		if r.Method == "POST" && r.URL.Path == "/mcp" {
			// POST /mcp: one message or a batch; each logged as what this server runs.
			var raw json.RawMessage
			if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			var msgs []rpcMsg
			if len(raw) > 0 && raw[0] == '[' {
				json.Unmarshal(raw, &msgs)
			} else {
				var m rpcMsg
				json.Unmarshal(raw, &m)
				msgs = []rpcMsg{m}
			}
			out := []string{}
			for _, m := range msgs {
				var p payment
				json.Unmarshal(m.Params.Arguments, &p)
				logf(map[string]any{"view": "rpc", "rpc_method": m.Method, "tool": m.Params.Name, "recipient": p.Recipient})
				if len(m.ID) > 0 {
					out = append(out, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"content":[]}}`, m.ID))
				}
			}
			w.Header().Set("Content-Type", "application/json")
			if len(raw) > 0 && raw[0] == '[' {
				fmt.Fprintf(w, "[%s]", strings.Join(out, ","))
			} else if len(out) > 0 {
				w.Write([]byte(out[0]))
			} else {
				w.WriteHeader(202)
			}
			return
		}
		entry["view"] = "other"
		logf(entry)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	})
	http.ListenAndServe("127.0.0.1:"+port, nil)
}
