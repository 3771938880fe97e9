//! Integer formats that Kubernetes knows.
//!
//! schemars names Rust's unsigned integers `uint8` … `uint64`. The API server knows only
//! `int32` and `int64`, and warns on every install about the others
//! (`unrecognized format "uint32"`). Each unsigned format becomes the smallest known format
//! that holds its range, and the range itself moves into `minimum` and `maximum`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// Rewrites every unsigned integer format in the CRD's schemas.
pub(super) fn use_kubernetes_formats(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            visit(schema);
        }
    }
}

fn visit(schema: &mut JSONSchemaProps) {
    if let Some((format, maximum)) = schema.format.as_deref().and_then(known_format) {
        schema.format = Some(format.to_owned());
        schema.minimum = Some(schema.minimum.map_or(0.0, |m| m.max(0.0)));
        if let Some(maximum) = maximum {
            schema.maximum = Some(schema.maximum.map_or(maximum, |m| m.min(maximum)));
        }
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(
            schema
                .pattern_properties
                .iter_mut()
                .flat_map(|p| p.values_mut()),
        )
        .chain(schema.definitions.iter_mut().flat_map(|p| p.values_mut()))
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    for child in children {
        visit(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => visit(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(visit),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        visit(extra);
    }
}

/// The known format for an unsigned one, and the maximum that the format alone no longer
/// says (`None` where the known format's own range is the limit).
fn known_format(format: &str) -> Option<(&'static str, Option<f64>)> {
    match format {
        "uint8" => Some(("int32", Some(f64::from(u8::MAX)))),
        "uint16" => Some(("int32", Some(f64::from(u16::MAX)))),
        "uint32" => Some(("int64", Some(f64::from(u32::MAX)))),
        // Kubernetes stores integers as int64: that is the real limit of a u64 field.
        "uint64" => Some(("int64", None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_formats_become_known_ones_with_their_range() {
        let mut schema = JSONSchemaProps {
            format: Some("uint32".into()),
            minimum: Some(0.0),
            ..JSONSchemaProps::default()
        };
        visit(&mut schema);
        assert_eq!(schema.format.as_deref(), Some("int64"));
        assert_eq!(schema.minimum, Some(0.0));
        assert_eq!(schema.maximum, Some(4_294_967_295.0));

        let mut narrower = JSONSchemaProps {
            format: Some("uint8".into()),
            maximum: Some(8.0),
            ..JSONSchemaProps::default()
        };
        visit(&mut narrower);
        assert_eq!(narrower.format.as_deref(), Some("int32"));
        assert_eq!(narrower.maximum, Some(8.0), "a tighter bound stays");
    }
}
