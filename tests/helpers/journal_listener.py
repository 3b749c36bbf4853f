#!/usr/bin/env python3
# journal_listener.py SOCKET OUT - a stand-in for systemd-journald's native
# socket (t-journal.sh): binds a datagram socket at SOCKET and appends each
# record it receives to OUT as one JSON line, a list of [KEY, VALUE] pairs
# in the order sent (a field may repeat).  It reads the native protocol as
# sd_journal_sendv() writes it: "KEY=VALUE\n", or for a value that holds a
# newline "KEY\n" + 64-bit little-endian length + VALUE + "\n"; a record
# too big for a datagram comes as an empty datagram passing a sealed memfd
# (SCM_RIGHTS), whose contents are the same format.  Runs until killed.
import array, json, os, socket, struct, sys

def parse(buf):
    fields, i = [], 0
    while i < len(buf):
        nl = buf.find(b"\n", i)
        if nl < 0:
            raise ValueError("record does not end in a newline")
        line = buf[i:nl]
        eq = line.find(b"=")
        if eq >= 0:
            fields.append([line[:eq].decode(), line[eq + 1:].decode("utf-8", "replace")])
            i = nl + 1
            continue
        # binary-safe form: KEY\n, le64 size, value, \n
        key = line.decode()
        (size,) = struct.unpack_from("<Q", buf, nl + 1)
        start = nl + 9
        val = buf[start:start + size]
        if buf[start + size:start + size + 1] != b"\n":
            raise ValueError("binary field %s not ended by a newline" % key)
        fields.append([key, val.decode("utf-8", "replace")])
        i = start + size + 1
    return fields

def main():
    path, out = sys.argv[1:3]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(path)
    os.chmod(path, 0o666)
    with open(out + ".ready", "w"):
        pass
    while True:
        data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(16 * 4))
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                for fd in fds:
                    os.lseek(fd, 0, os.SEEK_SET)
                    chunks = []
                    while True:
                        c = os.read(fd, 1 << 20)
                        if not c:
                            break
                        chunks.append(c)
                    os.close(fd)
                    data += b"".join(chunks)
        try:
            rec = parse(data)
        except (ValueError, struct.error) as e:
            rec = [["_LISTENER_ERROR", str(e)]]
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")

main()
