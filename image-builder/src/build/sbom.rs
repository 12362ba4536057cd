//! The image's software bill of materials, in the two formats CVE scanners
//! read (Trivy, Grype, Dependency-Track): SPDX 2.3 JSON and CycloneDX 1.5
//! JSON.
//!
//! Made from the build root's dpkg database before `/usr` is cut out of it
//! (the slot image carries no dpkg database), so every Debian package is in
//! it — the kernel, its modules and the firmware packages too, which
//! Flatcar's SBOM leaves out (flatcar/scripts#385) — plus Drover's own
//! programs, which no package installs. Each Debian package is named by
//! its package URL (`pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&
//! distro=debian-12.8`, the form scanners match against Debian's security
//! tracker) and by its source package, which is what Debian's advisories
//! name. Deterministic: the same build inputs give the same bytes.

use std::path::Path;

use serde_json::{json, Value};

use super::rootfs::DebPackage;

/// The SPDX file's name, in the build output and under `/usr/share/drover/`.
pub const SPDX_FILE: &str = "sbom.spdx.json";
/// The CycloneDX file's name, in the build output and under `/usr/share/drover/`.
pub const CYCLONEDX_FILE: &str = "sbom.cdx.json";

/// What the SBOM describes.
pub struct SbomInput<'a> {
    /// The image's OS name and version.
    pub os_name: &'a str,
    /// Release version.
    pub os_version: &'a str,
    /// The Debian release of the build root (`/etc/debian_version`, e.g.
    /// `12.8`), when it has one.
    pub debian_version: Option<&'a str>,
    /// The installed Debian packages.
    pub packages: &'a [DebPackage],
    /// Drover's own programs in the image: (name, SHA-256 hex).
    pub drover_files: &'a [(String, String)],
    /// Build time (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    /// A value unique to this build and stable across rebuilds of it
    /// (document namespace, serial number).
    pub unique: [u8; 16],
}

/// The Debian release of a root file system (`/etc/debian_version`).
pub fn debian_version(root: &Path) -> Option<String> {
    let v = std::fs::read_to_string(root.join("etc/debian_version")).ok()?;
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Percent-encodes what a package URL component may not carry as is
/// (everything but ASCII letters, digits and `.-_~`).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b".-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The package URL of a Debian binary package (purl spec, `deb` type: the
/// epoch as a qualifier, the source package as `upstream`, qualifiers
/// sorted by key).
pub fn purl(p: &DebPackage, debian_version: Option<&str>) -> String {
    let (epoch, version) = match p.version.split_once(':') {
        Some((e, v)) if e.bytes().all(|b| b.is_ascii_digit()) => (Some(e), v),
        _ => (None, p.version.as_str()),
    };
    let mut q = vec![format!("arch={}", pct(&p.arch))];
    if let Some(d) = debian_version {
        q.push(format!("distro=debian-{}", pct(d)));
    }
    if let Some(e) = epoch {
        q.push(format!("epoch={e}"));
    }
    if p.source != p.name || p.source_version != p.version {
        let upstream = if p.source_version == p.version {
            p.source.clone()
        } else {
            format!("{}@{}", p.source, p.source_version)
        };
        q.push(format!("upstream={}", pct(&upstream)));
    }
    format!(
        "pkg:deb/debian/{}@{}?{}",
        pct(&p.name),
        pct(version),
        q.join("&")
    )
}

/// An SPDX identifier (letters, digits, `.` and `-` only), unique by `i`.
fn spdx_id(kind: &str, i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{i}-{clean}")
}

/// An SPDX package of this document: no files analysed, nothing asserted
/// about where it came from or its licence (Debian's copyright files are
/// not machine-readable throughout). Callers add the rest.
fn spdx_package(id: &str, name: &str, version: &str, supplier: &str) -> Value {
    json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "supplier": supplier,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })
}

/// `Name <mail>` (a Debian `Maintainer:`) as an SPDX supplier.
fn spdx_supplier(maintainer: Option<&str>) -> String {
    let Some(m) = maintainer else {
        return "NOASSERTION".into();
    };
    match m.split_once('<') {
        Some((name, mail)) => format!(
            "Organization: {} ({})",
            name.trim(),
            mail.trim_end_matches('>').trim()
        ),
        None => format!("Organization: {}", m.trim()),
    }
}

fn uuid_text(b: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// The SPDX 2.3 document (JSON).
pub fn spdx(input: &SbomInput<'_>) -> Value {
    let created = drover_core::time::Utc::from_unix(input.created).rfc3339();
    let tool = format!("Tool: drover-{}", env!("CARGO_PKG_VERSION"));
    let os_id = "SPDXRef-OperatingSystem";
    let mut image = spdx_package(
        os_id,
        input.os_name,
        input.os_version,
        "Organization: Drover",
    );
    image["primaryPackagePurpose"] = json!("OPERATING-SYSTEM");
    image["summary"] = json!("Drover container host: the read-only /usr slot image");
    let mut packages = vec![image];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": os_id,
    })];
    let mut contains = |id: &str| {
        relationships.push(json!({
            "spdxElementId": os_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }))
    };
    if let Some(d) = input.debian_version {
        let id = "SPDXRef-Distribution-debian";
        let mut debian = spdx_package(id, "debian", d, "Organization: Debian");
        debian["primaryPackagePurpose"] = json!("OPERATING-SYSTEM");
        packages.push(debian);
        contains(id);
    }
    for (i, p) in input.packages.iter().enumerate() {
        let id = spdx_id("deb", i, &p.name);
        let mut pkg = spdx_package(
            &id,
            &p.name,
            &p.version,
            &spdx_supplier(p.maintainer.as_deref()),
        );
        // The form Trivy reads the source package from.
        pkg["sourceInfo"] = json!(format!(
            "built package from: {} {}",
            p.source, p.source_version
        ));
        pkg["externalRefs"] = json!([{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl(p, input.debian_version),
        }]);
        if let Some(h) = &p.homepage {
            pkg["homepage"] = json!(h);
        }
        if let Some(s) = &p.summary {
            pkg["summary"] = json!(s);
        }
        packages.push(pkg);
        contains(&id);
    }
    for (i, (name, sha256)) in input.drover_files.iter().enumerate() {
        let id = spdx_id("drover", i, name);
        let mut program =
            spdx_package(&id, name, env!("CARGO_PKG_VERSION"), "Organization: Drover");
        program["primaryPackagePurpose"] = json!("APPLICATION");
        program["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha256}]);
        packages.push(program);
        contains(&id);
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", input.os_name, input.os_version),
        "documentNamespace": format!(
            "https://example.invalid/drover/spdx/{}-{}-{}",
            input.os_name,
            input.os_version,
            uuid_text(input.unique)
        ),
        "creationInfo": {
            "created": created,
            "creators": [tool, "Organization: Drover"],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// The CycloneDX 1.5 document (JSON).
pub fn cyclonedx(input: &SbomInput<'_>) -> Value {
    let os_ref = format!("{}@{}", input.os_name, input.os_version);
    let mut components = Vec::new();
    let mut refs = Vec::new();
    if let Some(d) = input.debian_version {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": "debian",
            "name": "debian",
            "version": d,
        }));
        refs.push("debian".to_string());
    }
    for p in input.packages {
        let purl = purl(p, input.debian_version);
        let mut c = json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "properties": [
                {"name": "drover:deb:arch", "value": p.arch},
                {"name": "drover:deb:source", "value": p.source},
                {"name": "drover:deb:source-version", "value": p.source_version},
            ],
        });
        if let Some(m) = &p.maintainer {
            c["supplier"] = json!({"name": m});
        }
        if let Some(s) = &p.summary {
            c["description"] = json!(s);
        }
        if let Some(h) = &p.homepage {
            c["externalReferences"] = json!([{"type": "website", "url": h}]);
        }
        refs.push(purl);
        components.push(c);
    }
    for (name, sha256) in input.drover_files {
        let r = format!("drover:{name}");
        components.push(json!({
            "type": "application",
            "bom-ref": r,
            "name": name,
            "version": env!("CARGO_PKG_VERSION"),
            "supplier": {"name": "Drover"},
            "hashes": [{"alg": "SHA-256", "content": sha256}],
        }));
        refs.push(r);
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", uuid_text(input.unique)),
        "version": 1,
        "metadata": {
            "timestamp": drover_core::time::Utc::from_unix(input.created).rfc3339(),
            "tools": {"components": [{
                "type": "application",
                "name": "drover",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "operating-system",
                "bom-ref": os_ref,
                "name": input.os_name,
                "version": input.os_version,
                "description": "Drover container host: the read-only /usr slot image",
            },
        },
        "components": components,
        "dependencies": [{"ref": os_ref, "dependsOn": refs}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, source: &str, source_version: &str) -> DebPackage {
        DebPackage {
            name: name.into(),
            arch: "amd64".into(),
            version: version.into(),
            source: source.into(),
            source_version: source_version.into(),
            maintainer: Some("GNU Libc Maintainers <debian-glibc@lists.debian.org>".into()),
            homepage: None,
            summary: Some("GNU C Library: Shared libraries".into()),
        }
    }

    #[test]
    fn package_urls_follow_the_deb_type() {
        let libc = pkg("libc6", "2.36-9+deb12u4", "glibc", "2.36-9+deb12u4");
        assert_eq!(
            purl(&libc, Some("12.8")),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12.8&upstream=glibc"
        );
        let zlib = pkg("zlib1g", "1:1.2.13.dfsg-1", "zlib", "1:1.2.13.dfsg-1");
        assert_eq!(
            purl(&zlib, None),
            "pkg:deb/debian/zlib1g@1.2.13.dfsg-1?arch=amd64&epoch=1&upstream=zlib"
        );
        let own = pkg("base-files", "12.4+deb12u5", "base-files", "12.4+deb12u5");
        assert_eq!(
            purl(&own, None),
            "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64"
        );
        // A binNMU: the source's version differs from the binary's.
        let nmu = pkg("libfoo1", "1.0-1+b1", "foo", "1.0-1");
        assert!(purl(&nmu, None).ends_with("&upstream=foo%401.0-1"));
    }

    #[test]
    fn both_documents_list_every_package_with_unique_ids() {
        let packages = vec![
            pkg("libc6", "2.36-9+deb12u4", "glibc", "2.36-9+deb12u4"),
            pkg("libstdc++6", "12.2.0-14", "gcc-12", "12.2.0-14"),
            pkg(
                "linux-image-6.1.0-28-amd64",
                "6.1.119-1",
                "linux-signed-amd64",
                "6.1.119+1",
            ),
        ];
        let files = vec![("drover-agent".to_string(), "ab".repeat(32))];
        let input = SbomInput {
            os_name: "drover",
            os_version: "1.0.0",
            debian_version: Some("12.8"),
            packages: &packages,
            drover_files: &files,
            created: 1_795_824_000,
            unique: [7; 16],
        };
        let s = spdx(&input);
        let ids: Vec<&str> = s["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        // The image, Debian, three packages and one program.
        assert_eq!(ids.len(), 6);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|i| i
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')));
        assert_eq!(s["creationInfo"]["created"], "2026-11-28T00:00:00Z");
        assert_eq!(
            s["packages"][2]["sourceInfo"],
            "built package from: glibc 2.36-9+deb12u4"
        );
        assert_eq!(
            s["packages"][2]["supplier"],
            "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)"
        );
        // Every package is in the image.
        assert_eq!(s["relationships"].as_array().unwrap().len(), 1 + 5);

        let c = cyclonedx(&input);
        assert_eq!(c["components"].as_array().unwrap().len(), 5);
        assert_eq!(
            c["dependencies"][0]["dependsOn"].as_array().unwrap().len(),
            5
        );
        assert_eq!(
            c["components"][3]["purl"],
            "pkg:deb/debian/linux-image-6.1.0-28-amd64@6.1.119-1?arch=amd64&distro=debian-12.8&upstream=linux-signed-amd64%406.1.119%2B1"
        );
        // Same input, same bytes.
        assert_eq!(spdx(&input), s);
        assert_eq!(
            c["serialNumber"].as_str().unwrap().len(),
            "urn:uuid:".len() + 36
        );
    }
}
