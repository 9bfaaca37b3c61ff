//! `${VAR}` and `${VAR:-default}` interpolation inside the string values of a parsed TOML tree.
//!
//! Interpolating values after parsing (rather than the raw text) means a secret containing a
//! quote cannot change the file's structure, comments are never touched, and a missing variable
//! is reported with the path of the field that needs it.

use super::ConfigError;

/// Expands every placeholder; one that `lookup` cannot resolve (and has no default) is an
/// error, unless `keep` holds for its field: then it stays as written.
pub(super) fn interpolate(
    value: &mut toml::Value,
    origin: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    walk(
        value,
        &mut String::new(),
        &Resolver {
            origin,
            lookup,
            keep,
        },
    )
}

struct Resolver<'a> {
    origin: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    keep: &'a dyn Fn(&str) -> bool,
}

fn walk(value: &mut toml::Value, path: &mut String, r: &Resolver<'_>) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, path, r)?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path, r)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (k, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(item, path, r)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, field: &str, r: &Resolver<'_>) -> Result<String, ConfigError> {
    let origin = r.origin;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::BadPlaceholder {
                origin: origin.to_owned(),
                field: field.to_owned(),
            });
        };
        let inner = &after[..end];
        let (var, default) = match inner.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (inner, None),
        };
        match ((r.lookup)(var), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) if (r.keep)(field) => out.push_str(&rest[start..start + 2 + end + 1]),
            (None, None) => {
                return Err(ConfigError::MissingEnv {
                    origin: origin.to_owned(),
                    field: field.to_owned(),
                    var: var.to_owned(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(v: &str) -> Option<String> {
        match v {
            "A" => Some("alpha".into()),
            "Q" => Some("has \"quotes\"".into()),
            _ => None,
        }
    }

    const STRICT: Resolver<'static> = Resolver {
        origin: "o",
        lookup: &lookup,
        keep: &|_| false,
    };

    #[test]
    fn expands_defaults_and_values_without_touching_structure() {
        assert_eq!(expand("x-${A}-y", "f", &STRICT).unwrap(), "x-alpha-y");
        assert_eq!(expand("${B:-dflt}", "f", &STRICT).unwrap(), "dflt");
        assert_eq!(expand("${Q}", "f", &STRICT).unwrap(), "has \"quotes\"");
        assert!(matches!(
            expand("${A", "f", &STRICT),
            Err(ConfigError::BadPlaceholder { .. })
        ));
    }

    #[test]
    fn an_unresolved_placeholder_stays_as_written_only_where_kept() {
        let keeping = Resolver {
            keep: &|field| field == "kept",
            ..STRICT
        };
        assert_eq!(
            expand("${A}:${MISSING}", "kept", &keeping).unwrap(),
            "alpha:${MISSING}"
        );
        assert!(matches!(
            expand("${MISSING}", "other", &keeping),
            Err(ConfigError::MissingEnv { ref var, .. }) if var == "MISSING"
        ));
    }
}
