#!/usr/bin/env python3
"""Writes the seed corpora of the cvmm fuzz targets into fuzz/corpus/<target>/.

Each seed is a small valid (or nearly valid) input in the format its target reads; see the
module docs of fuzz_targets/*.rs. Run from anywhere: `python3 fuzz/gen_seeds.py`.
"""
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def records(recs):
    """The `[flags u8][len u16][bytes]` framing of cvmm_fuzz::records."""
    return b"".join(struct.pack("<BH", fl, len(b)) + b for fl, b in recs)


# ---- 9P ----------------------------------------------------------------------------------
def s9(b):
    return struct.pack("<H", len(b)) + b


def unsized(ty, tag, body):
    return struct.pack("<BH", ty, tag) + body


def sized(m):
    return struct.pack("<I", len(m) + 4) + m


TVERSION, TATTACH, TWALK, TLOPEN, TREAD, TREADDIR = 100, 104, 110, 12, 116, 40
TGETATTR, TCLUNK, TSTATFS, TXATTRWALK, TREADLINK, TLCREATE = 24, 120, 8, 30, 22, 14
NOFID = 0xFFFFFFFF


def walk(tag, fid, newfid, names):
    return unsized(TWALK, tag, struct.pack("<IIH", fid, newfid, len(names)) + b"".join(s9(n) for n in names))


def p9_sessions():
    read_file = [
        walk(2, 0, 1, [b"environment"]),
        unsized(TLOPEN, 3, struct.pack("<II", 1, 0)),
        unsized(TREAD, 4, struct.pack("<IQI", 1, 0, 4096)),
        unsized(TCLUNK, 5, struct.pack("<I", 1)),
    ]
    list_dir = [
        walk(2, 0, 1, []),
        unsized(TLOPEN, 3, struct.pack("<II", 1, 0o200000)),
        unsized(TREADDIR, 4, struct.pack("<IQI", 1, 0, 8192)),
        unsized(TREADDIR, 5, struct.pack("<IQI", 1, 2, 100)),
    ]
    attrs = [
        unsized(TGETATTR, 2, struct.pack("<IQ", 0, 0x3FFF)),
        unsized(TSTATFS, 3, struct.pack("<I", 0)),
        unsized(TXATTRWALK, 4, struct.pack("<II", 0, 2) + s9(b"")),
        unsized(TXATTRWALK, 5, struct.pack("<II", 0, 3) + s9(b"user.x")),
        unsized(TREAD, 6, struct.pack("<IQI", 3, 0, 64)),
    ]
    refused = [
        walk(2, 0, 1, [b"..", b"ca.pem"]),
        unsized(TLOPEN, 3, struct.pack("<II", 1, 2)),
        unsized(TLCREATE, 4, struct.pack("<I", 0) + s9(b"new") + struct.pack("<III", 0, 0o644, 0)),
        unsized(TREADLINK, 5, struct.pack("<I", 1)),
        unsized(TVERSION, 0xFFFF, struct.pack("<I", 8192) + s9(b"9P2000.L")),
    ]
    return {"read_file": read_file, "list_dir": list_dir, "attrs": attrs, "refused": refused}


def gen_p9():
    for name, msgs in p9_sessions().items():
        write("p9_messages", name, records([(0, m) for m in msgs]))
    # Raw (flag 1): a whole message with its size field, and a size-field lie.
    raw = sized(unsized(TREAD, 9, struct.pack("<IQI", 0, 0, 10)))
    lie = struct.pack("<I", 4000) + unsized(TSTATFS, 9, struct.pack("<I", 0))
    write("p9_messages", "raw", records([(1, raw), (1, lie)]))


# ---- virtio-9p chains --------------------------------------------------------------------
DATA = 0x10000


def gen_virtio():
    def chains(msgs):
        descs, ring, data = b"", [], b""
        for i, m in enumerate(msgs):
            req_addr = DATA + len(data)
            data += m
            resp_addr = 0x80000 + i * 0x2000
            descs += struct.pack("<QIHH", req_addr, len(m), 1, 2 * i + 1)  # NEXT
            descs += struct.pack("<QIHH", resp_addr, 0x2000, 2, 0)  # WRITE
            ring.append(2 * i)
        descs = descs.ljust(256, b"\0")
        avail = struct.pack("<HH", 0, len(ring)) + b"".join(struct.pack("<H", r) for r in ring)
        return descs + avail.ljust(36, b"\0") + data

    attach = sized(unsized(TATTACH, 1, struct.pack("<II", 0, NOFID) + s9(b"root") + s9(b"") + struct.pack("<I", 0)))
    for name, msgs in p9_sessions().items():
        write("virtio_9p_chain", name, chains([attach] + [sized(m) for m in msgs[:3]]))
    # One request split over two readable descriptors, reply in one writable descriptor.
    m = attach
    descs = struct.pack("<QIHH", DATA, 5, 1, 1) + struct.pack("<QIHH", DATA + 5, len(m) - 5, 1, 2)
    descs += struct.pack("<QIHH", 0x80000, 256, 2, 0)
    write("virtio_9p_chain", "split", descs.ljust(256, b"\0") + struct.pack("<HHH", 0, 1, 0).ljust(36, b"\0") + m)
    # An indirect descriptor table at 0x30000 (in the data area at DATA + 0x20000).
    ind = struct.pack("<QIHH", DATA, len(m), 1, 1) + struct.pack("<QIHH", 0x80000, 256, 2, 0)
    descs = struct.pack("<QIHH", DATA + 0x100, len(ind), 4, 0)  # INDIRECT
    write("virtio_9p_chain", "indirect",
          descs.ljust(256, b"\0") + struct.pack("<HHH", 0, 1, 0).ljust(36, b"\0") + m.ljust(0x100, b"\0") + ind)


# ---- Ethernet frames ---------------------------------------------------------------------
GUEST_MAC = bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56])
GW_MAC = bytes([0x52, 0x55, 0x0A, 0, 2, 2])
GUEST, GW, DNS = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]), bytes([10, 0, 2, 3])


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def l4(src, dst, proto, seg, at):
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    c = csum(pseudo + seg)
    return seg[:at] + struct.pack("!H", c or 0xFFFF) + seg[at + 2:]


def eth(dst_mac, ethertype, payload):
    return dst_mac + GUEST_MAC + struct.pack("!H", ethertype) + payload


def udp(src, dst, sport, dport, payload):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return eth(GW_MAC, 0x0800, ipv4(src, dst, 17, l4(src, dst, 17, seg, 6)))


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    return eth(GW_MAC, 0x0800, ipv4(src, dst, 6, l4(src, dst, 6, seg, 16)))


def arp_request(target):
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + GUEST_MAC + GUEST + b"\0" * 6 + target
    return eth(b"\xff" * 6, 0x0806, body)


def dhcp(msg_type):
    bootp = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, 0x1234, 0, 0x8000, b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4)
    bootp += GUEST_MAC.ljust(16, b"\0") + b"\0" * 192 + bytes([99, 130, 83, 99])
    opts = bytes([53, 1, msg_type])
    if msg_type == 3:
        opts += bytes([50, 4]) + GUEST + bytes([54, 4]) + GW
    return bootp + opts + bytes([255])


def gen_net():
    zero = bytes(4)
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    seeds = {
        "arp": [(0, arp_request(GW)), (2, arp_request(DNS))],
        "dhcp": [(0, udp(zero, b"\xff" * 4, 68, 67, dhcp(1))), (2, udp(zero, b"\xff" * 4, 68, 67, dhcp(3)))],
        "dns": [(2, udp(GUEST, DNS, 40000, 53, b"\x12\x34\x01\x00\x00\x01\0\0\0\0\0\0\x07example\x03com\0\0\x01\0\x01"))],
        "udp_gw": [(2, udp(GUEST, GW, 40001, 9, b"hello"))],
        "tcp_syn_gw": [(2, tcp(GUEST, GW, 40002, 9, 1000, 0, 0x02)),
                       (2, tcp(GUEST, GW, 40002, 9, 1001, 1, 0x10, b"data")),
                       (2, tcp(GUEST, GW, 40002, 9, 1005, 1, 0x11))],
        "tcp_rst_local": [(2, tcp(GUEST, bytes([10, 0, 2, 77]), 40003, 80, 5, 0, 0x02)),
                          (0, tcp(GUEST, GW, 40003, 80, 5, 0, 0x04))],
        "icmp": [(2, eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 1, icmp)))],
    }
    for name, recs in seeds.items():
        write("net_frames", name, records(recs))


# ---- IGVM and OVMF -----------------------------------------------------------------------
def vh(ty, payload):
    payload += b"\0" * (-len(payload) % 8)
    return struct.pack("<II", ty, len(payload)) + payload


def igvm(headers, file_data):
    var = b"".join(headers)
    data_off = 24 + len(var)
    total = data_off + len(file_data)
    fixed = struct.pack("<IIIIII", 0x4D564749, 1, 24, len(var), total, 0)
    crc = zlib.crc32(fixed + var) & 0xFFFFFFFF
    return fixed[:20] + struct.pack("<I", crc) + var + file_data


def gen_igvm():
    platform = vh(0x1, struct.pack("<IBBHQ", 1, 0, 2, 1, 0))  # SEV-SNP
    policy = vh(0x101, struct.pack("<QII", 0x30000, 1, 0))
    # File offsets are from the start of the file; data starts after the headers.
    def page(gpa, off, flags=0, data_type=0):
        return vh(0x302, struct.pack("<QIIIHH", gpa, 1, off, flags, data_type, 0))

    def vp(gpa, off):
        return vh(0x304, struct.pack("<QIIHHI", gpa, 1, off, 0, 0, 0))

    # Headers have fixed sizes, so the data offset is known before building.
    hdr_len = lambda n_pages, n_vp: len(platform) + len(policy) + n_pages * 32 + n_vp * 32
    data_at = 24 + hdr_len(1, 1)
    vmsa = bytearray(4096)
    struct.pack_into("<Q", vmsa, 0x3B0, 1)  # sev_features: SNP active
    struct.pack_into("<Q", vmsa, 0x178, 0xFFF0)  # rip
    write("igvm_parse", "page_and_vmsa",
          igvm([platform, policy, page(0xFFFF_F000, data_at), vp(0xFFFF_FFFF_F000, data_at + 4096)],
               b"\xf4" * 4096 + bytes(vmsa)))
    write("igvm_parse", "zero_page_only", igvm([platform, policy, page(0x1000, 0)], b"\0" * 8))
    area = vh(0x301, struct.pack("<QII", 4096, 0, 0))
    insert = vh(0x303, struct.pack("<QII", 0x2000, 1, 0))
    count = vh(0x307, struct.pack("<II", 0, 0))
    write("igvm_parse", "parameters", igvm([platform, policy, area, count, insert], b"\0" * 8))
    write("igvm_parse", "no_platform", igvm([policy, page(0x1000, 0)], b"\0" * 8))
    # Two page directives over the same 4 KiB page: every IGVM path must reject the file.
    write("igvm_parse", "overlapping_pages",
          igvm([platform, policy, page(0x1000, 0), page(0x1000, 0)], b"\0" * 8))
    # TDX platform (type 3): page data and a parameter area for the TDX plan.
    tdx = vh(0x1, struct.pack("<IBBHQ", 1, 0, 3, 1, 0))
    write("igvm_parse", "tdx_pages", igvm([tdx, page(0x1000, 0), area, insert], b"\0" * 8))
    # NATIVE platform (type 0): a page, a parameter area and an x86-64 VP context (232 bytes)
    # for the plain-KVM loader.
    native = vh(0x1, struct.pack("<IBBHQ", 1, 0, 0, 1, 0))
    n_hdr = len(native) + 32 + len(area) + len(count) + len(insert) + 32
    n_data = 24 + n_hdr
    ctx = bytearray(232)
    struct.pack_into("<Q", ctx, 16 * 8, 0x1000)  # rip
    write("igvm_parse", "native_context",
          igvm([native, page(0x1000, n_data), area, count, insert, vp(0, n_data + 4096)],
               b"\xf4" * 4096 + bytes(ctx)))

    # OVMF: an image whose end holds the GUIDed footer table.
    def guid(d1, d2, d3, d4):
        return struct.pack("<IHH", d1, d2, d3) + bytes(d4)

    footer = guid(0x96B582DE, 0x1FB2, 0x45F7, [0xBA, 0xEA, 0xA3, 0x66, 0xC5, 0x5A, 0x08, 0x2D])
    sev_meta = guid(0xDC886566, 0x984A, 0x4798, [0xA7, 0x5E, 0x55, 0x85, 0xA7, 0xBF, 0x67, 0xCC])
    reset = guid(0x00F771DE, 0x1A7E, 0x4FCB, [0x89, 0x0E, 0x68, 0xC7, 0x7E, 0x2F, 0xB4, 0x4E])
    hashes = guid(0x7255371F, 0x3A3B, 0x4B04, [0x92, 0x7B, 0x1D, 0xA6, 0xEF, 0xA8, 0xD4, 0x54])

    def entry(g, data):
        return data + struct.pack("<H", len(data) + 18) + g

    def ovmf(entries, size=8192, meta=b""):
        table = b"".join(entries)
        tail = table + struct.pack("<H", len(table) + 18) + footer + b"\0" * 32
        img = bytearray(size)
        img[size - len(tail):] = tail
        img[:len(meta)] = meta
        return bytes(img)

    sections = struct.pack("<III", 0x80_0000, 0x1000, 1) + struct.pack("<III", 0x80_1000, 0x1000, 2)
    sections += struct.pack("<III", 0x80_2000, 0x1000, 3) + struct.pack("<III", 0x80_3000, 0x1000, 0x10)
    meta = b"ASEV" + struct.pack("<III", 16 + len(sections), 1, 4) + sections
    full = ovmf([entry(sev_meta, struct.pack("<I", 8192)), entry(reset, struct.pack("<I", 0xFFFF_F000)),
                 entry(hashes, struct.pack("<II", 0x80_3000, 0x400))], meta=meta)
    write("igvm_parse", "ovmf_sev", full)
    write("igvm_parse", "ovmf_tail", full[-256:])

    # TDVF: TDX metadata ("TDVF" descriptor, offset from the end of the image) with a BFV from
    # the image, a TD_HOB and a TEMP_MEM section.
    tdx_meta = guid(0xE47A6535, 0x984A, 0x4798, [0x86, 0x5E, 0x46, 0x85, 0xA7, 0xBF, 0x8E, 0xC2])
    size = 8192
    tdvf_sections = struct.pack("<IIQQII", 0, 0x1000, 0xFFFF_E000, 0x1000, 0, 1)  # BFV, measured
    tdvf_sections += struct.pack("<IIQQII", 0, 0, 0x80_0000, 0x1000, 2, 0)  # TD_HOB
    tdvf_sections += struct.pack("<IIQQII", 0, 0, 0x80_1000, 0x2000, 3, 0)  # TEMP_MEM
    desc = b"TDVF" + struct.pack("<III", 16 + len(tdvf_sections), 1, 3) + tdvf_sections
    desc_at = 0x1000
    write("igvm_parse", "tdvf",
          ovmf([entry(tdx_meta, struct.pack("<I", size - desc_at))], size=size,
               meta=b"\0" * desc_at + desc))


# ---- kernels -----------------------------------------------------------------------------
def gen_kernel():
    # bzImage: one setup sector plus boot sector, protocol 2.15, 64-bit entry.
    setup_sects = 1
    img = bytearray(512 * (1 + setup_sects) + 512)
    img[0x1F1] = setup_sects
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)  # version
    img[0x211] = 1  # loadflags: LOADED_HIGH
    struct.pack_into("<I", img, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", img, 0x230, 0x200000)  # kernel_alignment
    img[0x234] = 1  # relocatable
    struct.pack_into("<H", img, 0x236, 1)  # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", img, 0x238, 255)  # cmdline_size
    struct.pack_into("<I", img, 0x260, 0x100000)  # init_size
    img[512 * (1 + setup_sects):] = b"\xf4" * 512
    write("kernel_image", "bzimage", bytes(img))

    # ELF64 vmlinux: one PT_LOAD and one PT_NOTE carrying the Xen PVH entry note.
    note_name = b"Xen\0"
    note = struct.pack("<III", len(note_name), 4, 18) + note_name + struct.pack("<I", 0x100000)
    code = b"\xf4" * 16
    ehsize, phsize = 64, 56
    ph_off = ehsize
    note_off = ph_off + 2 * phsize
    code_off = note_off + len(note)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, ph_off, 0, 0, ehsize, phsize, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, 0x100000, 0x100000, len(code), len(code), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    write("kernel_image", "elf_pvh", ehdr + load + pnote + note + code)
    write("kernel_image", "elf_no_pvh", ehdr[:56] + struct.pack("<HH", 1, 64) + ehdr[60:] + load + pnote + note + code)
    write("kernel_image", "not_a_kernel", b"MZ\x90\0just some bytes")


# ---- option strings ----------------------------------------------------------------------
def gen_options():
    for i, s in enumerate([
        "tcp::7020-:7002", "tcp:127.0.0.1:7020-10.0.2.15:7002", ":8080-:80", "udp::1-:2",
        "5:7002", "env_share=/tmp/env", "certs_share=/etc/ssl", "host", "EPYC-v4,+avx2,-sse4.1",
        "max,x2apic=off", "qemu64,sse4_2=on",
    ]):
        write("hostfwd_and_sizes", "opt%02d" % i, s.encode())


# ---- virtio-net queues -------------------------------------------------------------------
VNET_DATA = 0x10000
VIRTQ_NEXT, VIRTQ_WRITE, VIRTQ_INDIRECT = 1, 2, 4


def ring(descs, heads):
    """A 256-byte descriptor table and a 36-byte avail ring publishing `heads`."""
    table = b"".join(struct.pack("<QIHH", *d) for d in descs).ljust(256, b"\0")
    avail = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    return table + avail.ljust(36, b"\0")


def rx_buffers(n, size=2048):
    return ring([(0x80000 + i * 0x1000, size, VIRTQ_WRITE, 0) for i in range(n)], list(range(n)))


def vnet(flags, tx, rx, data, pending=b""):
    return bytes([flags]) + tx + rx + struct.pack("<H", len(pending)) + pending + data


def vnet_hdr(flags=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHHH", flags, 0, 0, 0, csum_start, csum_offset, 0)


def gen_virtio_net():
    arp = vnet_hdr() + arp_request(GW)
    one = ring([(VNET_DATA, len(arp), 0, 0)], [0])
    write("virtio_net_queues", "arp", vnet(0, one, rx_buffers(2), arp))
    write("virtio_net_queues", "arp_event_idx", vnet(1, one, rx_buffers(2), arp))
    write("virtio_net_queues", "arp_small_queue", vnet(4, one, rx_buffers(4), arp))
    # The frame split over two readable descriptors; RX chains of a header and a body buffer.
    split = ring([(VNET_DATA, 20, VIRTQ_NEXT, 1), (VNET_DATA + 20, len(arp) - 20, 0, 0)], [0])
    rx_split = ring([(0x80000, 12, VIRTQ_WRITE | VIRTQ_NEXT, 1), (0x81000, 2048, VIRTQ_WRITE, 0)], [0])
    write("virtio_net_queues", "split_chains", vnet(0, split, rx_split, arp))
    # An indirect TX table at VNET_DATA + 0x100.
    ind = struct.pack("<QIHH", VNET_DATA, len(arp), 0, 0)
    tx_ind = ring([(VNET_DATA + 0x100, len(ind), VIRTQ_INDIRECT, 0)], [0])
    write("virtio_net_queues", "indirect", vnet(0, tx_ind, rx_buffers(1), arp.ljust(0x100, b"\0") + ind))
    # A frame already pending, a too small RX buffer first (dropped), then a large one.
    rx_small = ring([(0x80000, 64, VIRTQ_WRITE, 0), (0x81000, 2048, VIRTQ_WRITE, 0)], [0, 1])
    pend = eth(GUEST_MAC, 0x0806, b"\0" * 100)
    write("virtio_net_queues", "pending_rx", vnet(0, ring([], []), rx_small, b"", pend))
    # TCP SYN to the gateway with a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM).
    seg = struct.pack("!HHIIBBHHH", 40010, 9, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = GUEST + GW + struct.pack("!BBH", 0, 6, len(seg))
    partial = (~csum(pseudo)) & 0xFFFF
    seg = seg[:16] + struct.pack("!H", partial) + seg[18:]
    syn = vnet_hdr(1, 34, 16) + eth(GW_MAC, 0x0800, ipv4(GUEST, GW, 6, seg))
    write("virtio_net_queues", "tcp_csum_offload",
          vnet(1, ring([(VNET_DATA, len(syn), 0, 0)], [0]), rx_buffers(4), syn))
    dhcp_f = vnet_hdr() + udp(bytes(4), b"\xff" * 4, 68, 67, dhcp(1))
    write("virtio_net_queues", "dhcp",
          vnet(0, ring([(VNET_DATA, len(dhcp_f), 0, 0)], [0]), rx_buffers(2), dhcp_f))


# ---- port I/O and MMIO dispatch ----------------------------------------------------------
OP_PIO_W, OP_PIO_R, OP_PIO_RAW, OP_MMIO_W, OP_MMIO_R, OP_MEM, OP_DMA = range(7)
DEV = {"serial": 0, "i8042": 1, "cmos": 2, "debug": 3, "pvpanic": 4, "power": 5, "fw_cfg": 6, "cf8": 7}
WIDTH = {1: 0, 2: 1, 4: 2, 8: 3}


def pio_w(dev, off, width, value):
    return (OP_PIO_W | WIDTH[width] << 3, bytes([DEV[dev], off]) + value.to_bytes(8, "little")[:width])


def pio_r(dev, off, width):
    return (OP_PIO_R | WIDTH[width] << 3, bytes([DEV[dev], off]))


def ecam_w(off, width, value):
    return (OP_MMIO_W | WIDTH[width] << 3, b"\0" + struct.pack("<I", off) + value.to_bytes(8, "little")[:width])


def ecam_r(off, width):
    return (OP_MMIO_R | WIDTH[width] << 3, b"\0" + struct.pack("<I", off))


def bar_w(off, width, value):
    return (OP_MMIO_W | WIDTH[width] << 3, b"\1" + struct.pack("<I", off) + value.to_bytes(8, "little")[:width])


def bar_r(off, width):
    return (OP_MMIO_R | WIDTH[width] << 3, b"\1" + struct.pack("<I", off))


def cf8(dev, reg):
    return pio_w("cf8", 0, 4, 0x80000000 | dev << 11 | reg)


def dma_access(control, length, address):
    return struct.pack(">IIQ", control, length, address)


def gen_pio():
    read8 = [pio_r("fw_cfg", 1, 1) for _ in range(4)]
    write("pio_dispatch", "fw_cfg_signature", records([pio_w("fw_cfg", 0, 2, 0x0000)] + read8))
    write("pio_dispatch", "fw_cfg_dir", records([pio_w("fw_cfg", 0, 2, 0x19)] + [pio_r("fw_cfg", 1, 4)] * 8))
    sel_read, skip, wr = 0x8 | 0x2, 0x4, 0x10
    write("pio_dispatch", "fw_cfg_dma", records([
        (OP_MEM, struct.pack("<I", 0x1000) + dma_access(0x19 << 16 | sel_read, 64, 0x2000)),
        (OP_DMA, struct.pack("<I", 0x1000)),
        (OP_MEM, struct.pack("<I", 0x1100) + dma_access(0x20 << 16 | 0x8 | skip, 16, 0)),
        (OP_DMA, struct.pack("<I", 0x1100)),
        (OP_MEM, struct.pack("<I", 0x1200) + dma_access(0x2, 5000, 0x3000)),
        (OP_DMA, struct.pack("<I", 0x1200)),
        (OP_MEM, struct.pack("<I", 0x1300) + dma_access(wr, 4, 0x3000)),
        (OP_DMA, struct.pack("<I", 0x1300)),
        (OP_MEM, struct.pack("<I", 0x1400) + dma_access(0x8 | 0x2, 64, 0xFFFFF000)),
        (OP_DMA, struct.pack("<I", 0x1400)),
        pio_r("fw_cfg", 4, 4), pio_r("fw_cfg", 8, 4),
        pio_w("fw_cfg", 4, 4, 0), pio_w("fw_cfg", 8, 4, int.from_bytes(struct.pack(">I", 0x1000), "little")),
    ]))
    write("pio_dispatch", "pci_cf8", records([
        cf8(0, 0), pio_r("cf8", 4, 4), cf8(1, 0), pio_r("cf8", 4, 4), pio_r("cf8", 6, 2),
        cf8(1, 0x10), pio_w("cf8", 4, 4, 0xFFFFFFFF), pio_r("cf8", 4, 4),
        cf8(1, 0x34), pio_r("cf8", 4, 1), cf8(2, 0), pio_r("cf8", 4, 4), pio_r("cf8", 0, 4),
    ]))
    slot1 = 1 << 15
    ops = [ecam_r(slot1, 4), ecam_w(slot1 + 4, 2, 0x6), bar_w(0x14, 1, 1), bar_w(0x14, 1, 3),
           bar_r(0x00, 4), bar_r(0x04, 4), bar_w(0x08, 4, 1), bar_w(0x0C, 4, 1), bar_w(0x14, 1, 0xB)]
    for q in range(2):
        base = 0x10000 + q * 0x4000
        ops += [bar_w(0x16, 2, q), bar_w(0x18, 2, 16), bar_w(0x1A, 2, q + 1),
                bar_w(0x20, 8, base), bar_w(0x28, 8, base + 0x1000), bar_w(0x30, 8, base + 0x2000),
                bar_w(0x1C, 2, 1)]
    ops += [bar_w(0x4000, 4, 0xFEE00000), bar_w(0x4008, 4, 0x41), bar_w(0x400C, 4, 0),
            ecam_w(slot1 + 0x42, 2, 0x8000), bar_w(0x14, 1, 0xF), bar_r(0x14, 1),
            bar_w(0x3000, 2, 0), bar_w(0x3004, 2, 1), bar_r(0x1000, 1), bar_r(0x2000, 8),
            bar_r(0x5000, 8), bar_w(0x14, 1, 0)]
    write("pio_dispatch", "virtio_pci_init", records(ops))
    write("pio_dispatch", "legacy", records([
        pio_w("serial", 0, 1, ord("h")), pio_w("serial", 3, 1, 0x80), pio_w("serial", 0, 1, 1),
        pio_r("serial", 5, 1), pio_w("cmos", 0, 1, 0x0A), pio_r("cmos", 1, 1), pio_w("cmos", 0, 1, 0x32),
        pio_r("cmos", 1, 1), pio_r("i8042", 4, 1), pio_w("debug", 0, 1, 0x42), pio_r("pvpanic", 0, 1),
        pio_r("power", 0, 2), pio_w("power", 2, 1, 0xAA), (OP_PIO_RAW, struct.pack("<H", 0x1234) + b"\xff"),
    ]))


# ---- the firmware-boot platform (q35 chipset, PM block, flash) --------------------------
Q35_DEV = {"i8042": 0, "port92": 1, "debugcon": 2, "fw_cfg": 3, "pm": 4, "cf8": 5}


def q_pio_w(dev, off, width, value):
    return (OP_PIO_W | WIDTH[width] << 3, bytes([Q35_DEV[dev], off]) + value.to_bytes(8, "little")[:width])


def q_pio_r(dev, off, width):
    return (OP_PIO_R | WIDTH[width] << 3, bytes([Q35_DEV[dev], off]))


def q_mmio_w(region, off, width, value):
    return (OP_MMIO_W | WIDTH[width] << 3, bytes([region]) + struct.pack("<I", off) + value.to_bytes(8, "little")[:width])


def q_mmio_r(region, off, width):
    return (OP_MMIO_R | WIDTH[width] << 3, bytes([region]) + struct.pack("<I", off))


def q_cf8(dev, reg):
    return q_pio_w("cf8", 0, 4, 0x80000000 | dev << 11 | reg)


ECAM, VARS, CODE, IOAPIC = 0, 1, 2, 3
OP_IOAPIC_LINE = 7


def gen_q35():
    # OVMF's order: host bridge id, PCIEXBAR, LPC PMBASE + ACPI_EN, PM timer, SCI_EN, S5.
    write("firmware_platform", "ovmf_platform_init", records([
        q_cf8(0, 0), q_pio_r("cf8", 6, 2), q_cf8(0, 0x64), q_pio_w("cf8", 4, 4, 0),
        q_cf8(0, 0x60), q_pio_w("cf8", 4, 4, 0xB0000001), q_mmio_r(ECAM, 0, 4),
        q_mmio_r(ECAM, 0x1F << 15, 4), q_cf8(0x1F, 0x40), q_pio_w("cf8", 4, 4, 0x601),
        q_cf8(0x1F, 0x44), q_pio_w("cf8", 4, 1, 0x80), q_pio_r("pm", 8, 4), q_pio_r("pm", 8, 4),
        q_pio_r("pm", 4, 2), q_pio_w("pm", 4, 2, 1), q_pio_r("port92", 0, 1),
        q_pio_w("port92", 0, 1, 2), q_pio_r("debugcon", 0, 1), q_pio_w("debugcon", 0, 1, ord("x")),
        q_pio_w("pm", 4, 2, 1 << 13), q_pio_w("cf8", 1, 1, 6),
    ]))
    # QemuFlashDetected, a program, an erase, CFI query, on both units.
    ops = []
    for region in (VARS, CODE):
        ops += [q_mmio_r(region, 0x10, 1), q_mmio_w(region, 0x10, 1, 0x50), q_mmio_r(region, 0x10, 1),
                q_mmio_w(region, 0x10, 1, 0x70), q_mmio_r(region, 0x10, 1), q_mmio_w(region, 0x10, 1, 0xFF),
                q_mmio_w(region, 0x20, 1, 0x10), q_mmio_w(region, 0x20, 1, 0x41), q_mmio_r(region, 0x20, 1),
                q_mmio_w(region, 0x1000, 1, 0x20), q_mmio_w(region, 0x1000, 1, 0xD0), q_mmio_r(region, 0x1000, 1),
                q_mmio_w(region, 0, 1, 0x98), q_mmio_r(region, 0x10, 4), q_mmio_w(region, 0, 1, 0xFF),
                q_mmio_r(region, 0x3FFC, 8)]
    write("firmware_platform", "flash", records(ops))
    # The split irqchip's IOAPIC: read VERSION, program pin 4 edge and pin 9 level, toggle
    # the lines, EOI the level vector, mask again.
    write("firmware_platform", "ioapic", records([
        q_mmio_w(IOAPIC, 0, 4, 1), q_mmio_r(IOAPIC, 0x10, 4),
        q_mmio_w(IOAPIC, 0, 4, 0x18), q_mmio_w(IOAPIC, 0x10, 4, 0x24),
        q_mmio_w(IOAPIC, 0, 4, 0x19), q_mmio_w(IOAPIC, 0x10, 4, 0),
        q_mmio_w(IOAPIC, 0, 4, 0x22), q_mmio_w(IOAPIC, 0x10, 4, 0x8029),
        (OP_IOAPIC_LINE, bytes([4, 1, 0x24])), (OP_IOAPIC_LINE, bytes([4, 0, 0x24])),
        (OP_IOAPIC_LINE, bytes([9, 1, 0])), (OP_IOAPIC_LINE, bytes([9, 1, 0x29])),
        (OP_IOAPIC_LINE, bytes([200, 1, 0x29])),
        q_mmio_w(IOAPIC, 0, 4, 0x22), q_mmio_r(IOAPIC, 0x10, 4), q_mmio_w(IOAPIC, 0x10, 4, 0x10000),
        q_mmio_r(IOAPIC, 0xFFC, 8),
    ]))
    # fw_cfg: directory and the loader script through DMA, the kernel through the data port.
    sel_read = 0x8 | 0x2
    write("firmware_platform", "fw_cfg", records([
        q_pio_w("fw_cfg", 0, 2, 0), q_pio_r("fw_cfg", 1, 4), q_pio_w("fw_cfg", 0, 2, 1), q_pio_r("fw_cfg", 1, 4),
        (OP_MEM, struct.pack("<I", 0x1000) + dma_access(0x19 << 16 | sel_read, 4096, 0x2000)),
        (OP_DMA, struct.pack("<I", 0x1000)),
        (OP_MEM, struct.pack("<I", 0x1100) + dma_access(0x23 << 16 | sel_read, 8192, 0x8000)),
        (OP_DMA, struct.pack("<I", 0x1100)),
        q_pio_w("fw_cfg", 0, 2, 0x11), q_pio_r("fw_cfg", 1, 8), q_pio_w("fw_cfg", 0, 2, 0x15), q_pio_r("fw_cfg", 1, 8),
    ]))


# ---- CreateVm requests -------------------------------------------------------------------
(F_LOG, F_CA, F_KEY, F_CERT, F_URL, F_CA_URL, F_TTL, F_TOKEN, F_AWS_ID, F_AWS_SECRET, F_AWS_URL,
 F_AWS_REGION, F_AA) = range(13)


def gen_requests():
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    seeds = {
        "minimal": [(F_URL, b"10.0.2.2:7001"), (F_LOG, b"debug")],
        "full": [(F_LOG, b"info"), (F_CA, pem), (F_KEY, b"-----BEGIN PRIVATE KEY-----\nk\n"), (F_CERT, pem),
                 (F_URL, b"cvms.example:7001"), (F_CA_URL, b"https://ca.example"), (F_TTL, b"1h30m"),
                 (F_TOKEN, b"tok-123"), (F_AWS_ID, b"AKIA0000"), (F_AWS_SECRET, b"s3cr3t"),
                 (F_AWS_URL, b"https://s3.example"), (F_AWS_REGION, b"eu-west-1"),
                 (F_AA, b"cc_kbc::http://10.0.2.2:8080")],
        "line_injection": [(F_LOG, b"info\nAGENT_CVM_ID=other"), (F_AWS_REGION, b"eu\r")],
        "ttl_forms": [(F_TTL, b"1.5h"), (F_TTL, b"2m3.5s"), (F_TTL, "1\u00b5s".encode()), (F_TTL, b"-0")],
        "ttl_huge": [(F_TTL, b"9223372036.854775807s")],
        "ttl_overflow": [(F_TTL, b"94522879700260684295381835.9h")],
        "kbs_param": [(F_AA, b"a init=/bin/sh"), (F_AA, "p\u00a0q".encode())],
        "long_cmdline": [(F_AA, b"p" * 2020)],
    }
    for name, recs in seeds.items():
        write("create_request", name, records(recs))


if __name__ == "__main__":
    gen_p9()
    gen_virtio()
    gen_net()
    gen_igvm()
    gen_kernel()
    gen_options()
    gen_virtio_net()
    gen_pio()
    gen_q35()
    gen_requests()
