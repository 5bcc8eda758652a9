// Command counter is podmigrate's test and demo workload: state that lives only in
// memory, to show that a migration keeps it.
//
//	GET /         increments the counter and returns its new value ("42\n")
//	GET /value    returns the counter without changing it
//	GET /checksum returns the sha256 of the patterned memory ("<hex> <bytes>\n")
//	GET /healthz  "ok"
//	GET /read     the content of READ_FILE (another container's LOG_FILE, through a shared volume)
//	GET /received the lines received through FIFO_IN or on UNIX_LISTEN, in order
//
// LOG_FILE, when set, gets a line with each new value; it is opened once and held open
// for appending, so a checkpoint finds it open, as it finds a program's log. FIFO_OUT
// (named pipes, made if absent, separated by ":") and UNIX_TO (a unix stream socket, connected once) get
// the same line, for another container of the pod that reads FIFO_IN or listens on
// UNIX_LISTEN: two containers that talk through a pipe or a unix socket.
// MEMORY_MIB (default 0) allocates that many MiB filled with a deterministic
// pseudo-random pattern (xorshift64*, seeded by PATTERN_SEED), which does not compress:
// a checkpoint carries every byte. PORT (default 8080) is the port. Connections are kept
// alive between requests, as clients of real servers keep them.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	mu       sync.Mutex
	counter  uint64
	memory   []byte
	received []string
)

func fill(buf []byte, seed uint64) {
	x := seed | 1
	for i := 0; i+8 <= len(buf); i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(buf[i:], x*2685821657736338717)
	}
}

func env(name string, fallback uint64) uint64 {
	v := os.Getenv(name)
	if v == "" {
		return fallback
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not a number\n", name, v)
		os.Exit(2)
	}
	return n
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// fifo opens the named pipe at path, made if absent, for reading and writing: opening it
// does not wait for the other end, and a reader sees no end of file when a writer goes
func fifo(path string) *os.File {
	if err := syscall.Mkfifo(path, 0o644); err != nil && !os.IsExist(err) {
		fail(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fail(err)
	}
	return f
}

// receive keeps every line read from r, after tag
func receive(r io.Reader, tag string) {
	lines := bufio.NewScanner(r)
	for lines.Scan() {
		mu.Lock()
		received = append(received, tag+lines.Text())
		mu.Unlock()
	}
}

func reply(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprint(w, body)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("podmigrate counter")
		return
	}
	mib := env("MEMORY_MIB", 0)
	memory = make([]byte, mib<<20)
	fill(memory, env("PATTERN_SEED", 1))
	port := env("PORT", 8080)
	// LOG_FILE is opened once and held open for appending, as a program's log is
	var outs []io.Writer
	if logFile := os.Getenv("LOG_FILE"); logFile != "" {
		logOut, err := os.OpenFile(logFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			fail(err)
		}
		outs = append(outs, logOut)
	}
	for _, path := range strings.Split(os.Getenv("FIFO_OUT"), ":") {
		if path != "" {
			outs = append(outs, fifo(path))
		}
	}
	if path := os.Getenv("FIFO_IN"); path != "" {
		go receive(fifo(path), "")
	}
	// UNIX_LISTEN (a socket's path) and TCP_LISTEN (host:port): every line received on a
	// connection is kept, after "unix:" or "tcp:"; UNIX_TO and TCP_TO: one connection held
	// open, each count written to it
	for _, listen := range [][2]string{{"unix", os.Getenv("UNIX_LISTEN")}, {"tcp", os.Getenv("TCP_LISTEN")}} {
		if listen[1] == "" {
			continue
		}
		if listen[0] == "unix" {
			_ = os.Remove(listen[1])
		}
		listener, err := net.Listen(listen[0], listen[1])
		if err != nil {
			fail(err)
		}
		go func() {
			for {
				conn, err := listener.Accept()
				if err != nil {
					fail(err)
				}
				go receive(conn, listen[0]+":")
			}
		}()
	}
	for _, to := range [][2]string{{"unix", os.Getenv("UNIX_TO")}, {"tcp", os.Getenv("TCP_TO")}} {
		if to[1] == "" {
			continue
		}
		conn, err := net.Dial(to[0], to[1])
		for ; err != nil; conn, err = net.Dial(to[0], to[1]) {
			time.Sleep(100 * time.Millisecond) // the other container listens soon
		}
		outs = append(outs, conn)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		counter++
		for _, out := range outs {
			if _, err := fmt.Fprintf(out, "%d\n", counter); err != nil {
				counter--
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		reply(w, fmt.Sprintf("%d\n", counter))
	})
	mux.HandleFunc("/read", func(w http.ResponseWriter, _ *http.Request) {
		data, err := os.ReadFile(os.Getenv("READ_FILE"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		reply(w, string(data))
	})
	mux.HandleFunc("/received", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		lines := strings.Join(received, "\n")
		mu.Unlock()
		reply(w, lines+"\n")
	})
	mux.HandleFunc("/value", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		n := counter
		mu.Unlock()
		reply(w, fmt.Sprintf("%d\n", n))
	})
	mux.HandleFunc("/checksum", func(w http.ResponseWriter, _ *http.Request) {
		sum := sha256.Sum256(memory)
		reply(w, fmt.Sprintf("%s %d\n", hex.EncodeToString(sum[:]), len(memory)))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { reply(w, "ok\n") })

	// keep-alive on, as servers have it: a client may hold one connection through a move
	server := &http.Server{Handler: mux}
	// Go's default listener, as any Go server has it: with Go >= 1.24 an MPTCP one where
	// the network namespace allows MPTCP (CRIU cannot dump that). Clusters podmigrate
	// builds turn MPTCP off in every pod (cluster_network_pod_sysctls), so this gets TCP.
	listener, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		fail(err)
	}
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
		<-signals
		os.Exit(0)
	}()
	fmt.Printf("counter: listening on :%d with %d MiB of patterned memory\n", port, mib)
	if err := server.Serve(listener); err != nil {
		fail(err)
	}
}
