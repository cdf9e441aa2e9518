//! CPUID for the guest: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), narrowed to a CPU model
//! (`host`, `EPYC`, `EPYC-v4`), edited by `+feat`/`-feat` (QEMU's `-cpu` syntax), and given the
//! topology of N vCPUs (one package, one thread per core).

use crate::error::{Result, VmmError};
use kvm_bindings::{kvm_cpuid_entry2, CpuId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// (name, leaf, subleaf, register, bit), names as QEMU spells them.
const FEATURES: &[(&str, u32, u32, Reg, u8)] = &[
    ("fpu", 1, 0, Reg::Edx, 0),
    ("vme", 1, 0, Reg::Edx, 1),
    ("de", 1, 0, Reg::Edx, 2),
    ("pse", 1, 0, Reg::Edx, 3),
    ("tsc", 1, 0, Reg::Edx, 4),
    ("msr", 1, 0, Reg::Edx, 5),
    ("pae", 1, 0, Reg::Edx, 6),
    ("mce", 1, 0, Reg::Edx, 7),
    ("cx8", 1, 0, Reg::Edx, 8),
    ("apic", 1, 0, Reg::Edx, 9),
    ("sep", 1, 0, Reg::Edx, 11),
    ("mtrr", 1, 0, Reg::Edx, 12),
    ("pge", 1, 0, Reg::Edx, 13),
    ("mca", 1, 0, Reg::Edx, 14),
    ("cmov", 1, 0, Reg::Edx, 15),
    ("pat", 1, 0, Reg::Edx, 16),
    ("pse36", 1, 0, Reg::Edx, 17),
    ("clflush", 1, 0, Reg::Edx, 19),
    ("mmx", 1, 0, Reg::Edx, 23),
    ("fxsr", 1, 0, Reg::Edx, 24),
    ("sse", 1, 0, Reg::Edx, 25),
    ("sse2", 1, 0, Reg::Edx, 26),
    ("ht", 1, 0, Reg::Edx, 28),
    ("sse3", 1, 0, Reg::Ecx, 0),
    ("pclmulqdq", 1, 0, Reg::Ecx, 1),
    ("monitor", 1, 0, Reg::Ecx, 3),
    ("vmx", 1, 0, Reg::Ecx, 5),
    ("ssse3", 1, 0, Reg::Ecx, 9),
    ("fma", 1, 0, Reg::Ecx, 12),
    ("cx16", 1, 0, Reg::Ecx, 13),
    ("pcid", 1, 0, Reg::Ecx, 17),
    ("sse4.1", 1, 0, Reg::Ecx, 19),
    ("sse4.2", 1, 0, Reg::Ecx, 20),
    ("x2apic", 1, 0, Reg::Ecx, 21),
    ("movbe", 1, 0, Reg::Ecx, 22),
    ("popcnt", 1, 0, Reg::Ecx, 23),
    ("tsc-deadline", 1, 0, Reg::Ecx, 24),
    ("aes", 1, 0, Reg::Ecx, 25),
    ("xsave", 1, 0, Reg::Ecx, 26),
    ("avx", 1, 0, Reg::Ecx, 28),
    ("f16c", 1, 0, Reg::Ecx, 29),
    ("rdrand", 1, 0, Reg::Ecx, 30),
    ("hypervisor", 1, 0, Reg::Ecx, 31),
    ("fsgsbase", 7, 0, Reg::Ebx, 0),
    ("bmi1", 7, 0, Reg::Ebx, 3),
    ("hle", 7, 0, Reg::Ebx, 4),
    ("avx2", 7, 0, Reg::Ebx, 5),
    ("smep", 7, 0, Reg::Ebx, 7),
    ("bmi2", 7, 0, Reg::Ebx, 8),
    ("erms", 7, 0, Reg::Ebx, 9),
    ("invpcid", 7, 0, Reg::Ebx, 10),
    ("rtm", 7, 0, Reg::Ebx, 11),
    ("avx512f", 7, 0, Reg::Ebx, 16),
    ("avx512dq", 7, 0, Reg::Ebx, 17),
    ("rdseed", 7, 0, Reg::Ebx, 18),
    ("adx", 7, 0, Reg::Ebx, 19),
    ("smap", 7, 0, Reg::Ebx, 20),
    ("clflushopt", 7, 0, Reg::Ebx, 23),
    ("clwb", 7, 0, Reg::Ebx, 24),
    ("sha-ni", 7, 0, Reg::Ebx, 29),
    ("avx512bw", 7, 0, Reg::Ebx, 30),
    ("avx512vl", 7, 0, Reg::Ebx, 31),
    ("umip", 7, 0, Reg::Ecx, 2),
    ("pku", 7, 0, Reg::Ecx, 3),
    ("vaes", 7, 0, Reg::Ecx, 9),
    ("vpclmulqdq", 7, 0, Reg::Ecx, 10),
    ("rdpid", 7, 0, Reg::Ecx, 22),
    ("md-clear", 7, 0, Reg::Edx, 10),
    ("spec-ctrl", 7, 0, Reg::Edx, 26),
    ("arch-capabilities", 7, 0, Reg::Edx, 29),
    ("ssbd", 7, 0, Reg::Edx, 31),
    ("xsaveopt", 0xd, 1, Reg::Eax, 0),
    ("xsavec", 0xd, 1, Reg::Eax, 1),
    ("xgetbv1", 0xd, 1, Reg::Eax, 2),
    ("xsaves", 0xd, 1, Reg::Eax, 3),
    ("lahf-lm", 0x8000_0001, 0, Reg::Ecx, 0),
    ("cmp-legacy", 0x8000_0001, 0, Reg::Ecx, 1),
    ("svm", 0x8000_0001, 0, Reg::Ecx, 2),
    ("cr8legacy", 0x8000_0001, 0, Reg::Ecx, 4),
    ("abm", 0x8000_0001, 0, Reg::Ecx, 5),
    ("sse4a", 0x8000_0001, 0, Reg::Ecx, 6),
    ("misalignsse", 0x8000_0001, 0, Reg::Ecx, 7),
    ("3dnowprefetch", 0x8000_0001, 0, Reg::Ecx, 8),
    ("osvw", 0x8000_0001, 0, Reg::Ecx, 9),
    ("topoext", 0x8000_0001, 0, Reg::Ecx, 22),
    ("perfctr-core", 0x8000_0001, 0, Reg::Ecx, 23),
    ("syscall", 0x8000_0001, 0, Reg::Edx, 11),
    ("nx", 0x8000_0001, 0, Reg::Edx, 20),
    ("mmxext", 0x8000_0001, 0, Reg::Edx, 22),
    ("fxsr-opt", 0x8000_0001, 0, Reg::Edx, 25),
    ("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    ("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    ("lm", 0x8000_0001, 0, Reg::Edx, 29),
    ("ibpb", 0x8000_0008, 0, Reg::Ebx, 12),
    ("stibp", 0x8000_0008, 0, Reg::Ebx, 15),
    ("amd-ssbd", 0x8000_0008, 0, Reg::Ebx, 24),
];

/// Leaves/registers a model narrows; bits outside FEATURES in these registers are cleared.
const MODEL_REGS: &[(u32, u32, Reg)] = &[
    (1, 0, Reg::Ecx),
    (1, 0, Reg::Edx),
    (7, 0, Reg::Ebx),
    (7, 0, Reg::Ecx),
    (7, 0, Reg::Edx),
    (0xd, 1, Reg::Eax),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
];

/// Features a model never loses: they describe the virtual platform, not the CPU.
const PLATFORM_FEATURES: &[&str] = &["hypervisor", "x2apic", "tsc-deadline", "ht", "cmp-legacy"];

const EPYC_FEATURES: &[&str] = &[
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "sse3",
    "pclmulqdq",
    "ssse3",
    "fma",
    "cx16",
    "sse4.1",
    "sse4.2",
    "movbe",
    "popcnt",
    "aes",
    "xsave",
    "avx",
    "f16c",
    "rdrand",
    "fsgsbase",
    "bmi1",
    "avx2",
    "smep",
    "bmi2",
    "rdseed",
    "adx",
    "smap",
    "clflushopt",
    "sha-ni",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "lahf-lm",
    "svm",
    "cr8legacy",
    "abm",
    "sse4a",
    "misalignsse",
    "3dnowprefetch",
    "osvw",
    "topoext",
    "syscall",
    "nx",
    "mmxext",
    "fxsr-opt",
    "pdpe1gb",
    "rdtscp",
    "lm",
];

/// What EPYC-v4 adds to EPYC (the v2-v4 revisions: speculation controls, xsaves, clwb, ...).
const EPYC_V4_EXTRA: &[&str] = &[
    "ibpb",
    "stibp",
    "amd-ssbd",
    "xsaves",
    "clwb",
    "umip",
    "rdpid",
    "perfctr-core",
];

struct Model {
    name: &'static str,
    vendor: &'static [u8; 12],
    family: u32,
    model: u32,
    stepping: u32,
    brand: &'static str,
    features: &'static [&'static [&'static str]],
}

const MODELS: &[Model] = &[
    Model {
        name: "EPYC",
        vendor: b"AuthenticAMD",
        family: 23,
        model: 1,
        stepping: 2,
        brand: "AMD EPYC Processor",
        features: &[EPYC_FEATURES],
    },
    Model {
        name: "EPYC-v4",
        vendor: b"AuthenticAMD",
        family: 23,
        model: 1,
        stepping: 2,
        brand: "AMD EPYC-v4 Processor",
        features: &[EPYC_FEATURES, EPYC_V4_EXTRA],
    },
];

/// A parsed `--cpu` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTemplate {
    model: Option<&'static str>,
    edits: Vec<(&'static str, bool)>,
}

fn feature(name: &str) -> Option<&'static (&'static str, u32, u32, Reg, u8)> {
    let canon = name.replace('_', "-");
    let canon = match canon.as_str() {
        "sse4-1" => "sse4.1".to_string(),
        "sse4-2" => "sse4.2".to_string(),
        _ => canon,
    };
    FEATURES.iter().find(|f| f.0 == canon)
}

impl CpuTemplate {
    /// Parses `MODEL[,+feat,-feat,feat=on|off]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut parts = spec.split(',');
        let model_name = parts.next().unwrap_or_default().trim();
        let model = match model_name {
            "host" | "max" => None,
            m => Some(
                MODELS
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(m))
                    .map(|x| x.name)
                    .ok_or_else(|| {
                        VmmError::Input(format!(
                            "unknown --cpu model '{m}' (known: host, {})",
                            MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                        ))
                    })?,
            ),
        };
        let mut edits = Vec::new();
        for p in parts {
            let p = p.trim();
            let (name, on) = if let Some(n) = p.strip_prefix('+') {
                (n, true)
            } else if let Some(n) = p.strip_prefix('-') {
                (n, false)
            } else if let Some(n) = p.strip_suffix("=on") {
                (n, true)
            } else if let Some(n) = p.strip_suffix("=off") {
                (n, false)
            } else {
                return Err(VmmError::Input(format!(
                    "--cpu '{spec}': '{p}' is not +feature, -feature, feature=on or feature=off"
                )));
            };
            let f = feature(name).ok_or_else(|| {
                VmmError::Input(format!("--cpu '{spec}': unknown CPU feature '{name}'"))
            })?;
            edits.push((f.0, on));
        }
        Ok(Self { model, edits })
    }
}

fn entry_mut(c: &mut CpuId, leaf: u32, sub: u32) -> Option<&mut kvm_cpuid_entry2> {
    c.as_mut_slice()
        .iter_mut()
        .find(|e| e.function == leaf && (e.index == sub || (e.flags & 1) == 0 && sub == 0))
}

fn reg(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn get_bit(c: &mut CpuId, f: &(&str, u32, u32, Reg, u8)) -> bool {
    entry_mut(c, f.1, f.2).is_some_and(|e| *reg(e, f.3) & (1 << f.4) != 0)
}

fn set_bit(c: &mut CpuId, f: &(&str, u32, u32, Reg, u8), on: bool) {
    if let Some(e) = entry_mut(c, f.1, f.2) {
        let r = reg(e, f.3);
        if on {
            *r |= 1 << f.4;
        } else {
            *r &= !(1 << f.4);
        }
    }
}

/// Applies the model and edits to KVM's supported CPUID (done once per VM).
pub fn apply_template(supported: &mut CpuId, t: &CpuTemplate) {
    if let Some(name) = t.model {
        let m = MODELS
            .iter()
            .find(|m| m.name == name)
            .expect("parsed model");
        let host: Vec<bool> = FEATURES.iter().map(|f| get_bit(supported, f)).collect();
        for &(leaf, sub, r) in MODEL_REGS {
            if let Some(e) = entry_mut(supported, leaf, sub) {
                *reg(e, r) = 0;
            }
        }
        for (f, was) in FEATURES.iter().zip(host) {
            let wanted =
                m.features.iter().any(|l| l.contains(&f.0)) || PLATFORM_FEATURES.contains(&f.0);
            if wanted && !was && !PLATFORM_FEATURES.contains(&f.0) {
                tracing::warn!(
                    feature = f.0,
                    model = m.name,
                    "host KVM lacks a feature of the CPU model; left out"
                );
            }
            set_bit(supported, f, wanted && was);
        }
        if let Some(e) = entry_mut(supported, 0, 0) {
            e.ebx = u32::from_le_bytes(m.vendor[0..4].try_into().unwrap());
            e.edx = u32::from_le_bytes(m.vendor[4..8].try_into().unwrap());
            e.ecx = u32::from_le_bytes(m.vendor[8..12].try_into().unwrap());
        }
        if let Some(e) = entry_mut(supported, 1, 0) {
            let (fam, ext_fam) = if m.family > 15 {
                (15, m.family - 15)
            } else {
                (m.family, 0)
            };
            e.eax = (ext_fam << 20)
                | ((m.model >> 4) << 16)
                | (fam << 8)
                | ((m.model & 0xf) << 4)
                | m.stepping;
        }
        let mut brand = [0u8; 48];
        brand[..m.brand.len()].copy_from_slice(m.brand.as_bytes());
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            if let Some(e) = entry_mut(supported, leaf, 0) {
                let w = |k: usize| {
                    u32::from_le_bytes(
                        brand[i * 16 + k * 4..i * 16 + k * 4 + 4]
                            .try_into()
                            .unwrap(),
                    )
                };
                (e.eax, e.ebx, e.ecx, e.edx) = (w(0), w(1), w(2), w(3));
            }
        }
    }
    for &(name, on) in &t.edits {
        let f = feature(name).expect("parsed feature");
        if on && !get_bit(supported, f) && t.model.is_none() {
            tracing::warn!(
                feature = name,
                "host KVM does not support the requested feature; left out"
            );
            continue;
        }
        set_bit(supported, f, on);
    }
    set_bit(supported, feature("hypervisor").unwrap(), true);
}

/// Clears the AMD memory-encryption leaf (0x8000001F) for a guest that is not confidential:
/// firmware reading SEV there would go on to read the SEV status MSR (OVMF's reset vector).
pub fn hide_sev(c: &mut CpuId) {
    for e in c.as_mut_slice() {
        if e.function == 0x8000_001f {
            (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
        }
    }
}

/// The CPUID of vCPU `id` of `count`: one package, one core per vCPU, APIC id = vCPU index.
pub fn for_vcpu(base: &CpuId, id: u32, count: u32) -> CpuId {
    let mut c = base.clone();
    let shift = 32 - count.saturating_sub(1).leading_zeros(); // bits to number `count` cores
    let amd = entry_mut(&mut c, 0, 0).is_some_and(|e| e.ebx == u32::from_le_bytes(*b"Auth"));
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xffff) | ((count.min(255)) << 16) | (id.min(255) << 24);
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            4 if !amd => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count.min(64) - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0x8000_0001 if amd && count > 1 => e.ecx |= 1 << 1,
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (count - 1).min(255);
            }
            0x8000_001e if amd => {
                e.eax = id;
                e.ebx &= !0xff00; // one thread per core
                e.ebx = (e.ebx & !0xff) | (id & 0xff);
                e.ecx &= !0xff;
            }
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_supported() -> CpuId {
        let mut entries = vec![
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0x1f,
                ebx: u32::from_le_bytes(*b"Genu"),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0xffff_ffff,
                edx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                flags: 1,
                ebx: 0xffff_ffff,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                flags: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                flags: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: 0,
                edx: 0xffff_ffff,
                ..Default::default()
            },
        ];
        for l in 0x8000_0002..=0x8000_0004 {
            entries.push(kvm_cpuid_entry2 {
                function: l,
                ..Default::default()
            });
        }
        CpuId::from_entries(&entries).unwrap()
    }

    fn has(c: &mut CpuId, name: &str) -> bool {
        get_bit(c, feature(name).unwrap())
    }

    #[test]
    fn parses_models_and_edits() {
        assert_eq!(CpuTemplate::parse("host").unwrap().model, None);
        let t = CpuTemplate::parse("EPYC-v4,+avx2,-svm,sse4_2=off").unwrap();
        assert_eq!(t.model, Some("EPYC-v4"));
        assert_eq!(
            t.edits,
            vec![("avx2", true), ("svm", false), ("sse4.2", false)]
        );
        let e = CpuTemplate::parse("Skylake").unwrap_err().to_string();
        assert!(e.contains("unknown --cpu model 'Skylake'"), "{e}");
        let e = CpuTemplate::parse("host,+warpdrive")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown CPU feature 'warpdrive'"), "{e}");
        assert!(CpuTemplate::parse("host,avx2").is_err());
    }

    #[test]
    fn edits_change_bits_and_host_lacking_features_stay_off() {
        let mut c = fake_supported();
        apply_template(&mut c, &CpuTemplate::parse("host,-avx2,+svm").unwrap());
        assert!(!has(&mut c, "avx2"));
        assert!(has(&mut c, "avx"));
        assert!(
            !has(&mut c, "svm"),
            "host (fake) has no svm, so +svm cannot enable it"
        );
        assert!(has(&mut c, "hypervisor"));
    }

    #[test]
    fn epyc_model_sets_vendor_family_brand_and_narrows_features() {
        let mut c = fake_supported();
        apply_template(&mut c, &CpuTemplate::parse("EPYC,-sha-ni").unwrap());
        let e0 = entry_mut(&mut c, 0, 0).unwrap();
        assert_eq!(e0.ebx.to_le_bytes(), *b"Auth");
        let e1 = entry_mut(&mut c, 1, 0).unwrap();
        assert_eq!((e1.eax >> 8) & 0xf, 15);
        assert_eq!((e1.eax >> 20) & 0xff, 8, "family 23 = 15 + 8");
        assert!(has(&mut c, "avx2"));
        assert!(!has(&mut c, "avx512f"), "EPYC has no AVX-512");
        assert!(!has(&mut c, "sha-ni"));
        assert!(!has(&mut c, "clwb"), "clwb is EPYC-v4 only");
        let b = entry_mut(&mut c, 0x8000_0002, 0).unwrap();
        assert_eq!(&b.eax.to_le_bytes(), b"AMD ");
        let mut v4 = fake_supported();
        apply_template(&mut v4, &CpuTemplate::parse("EPYC-v4").unwrap());
        assert!(has(&mut v4, "clwb"));
    }

    #[test]
    fn topology_numbers_each_vcpu() {
        let base = fake_supported();
        let mut c = for_vcpu(&base, 3, 4);
        let e1 = entry_mut(&mut c, 1, 0).unwrap();
        assert_eq!(e1.ebx >> 24, 3);
        assert_eq!((e1.ebx >> 16) & 0xff, 4);
        assert_ne!(e1.edx & (1 << 28), 0);
        let b1 = entry_mut(&mut c, 0xb, 1).unwrap();
        assert_eq!((b1.eax, b1.ebx, b1.edx), (2, 4, 3));
    }
}
