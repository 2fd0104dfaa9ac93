"""Serializer fields that take JSON types at their word.

DRF's CharField turns 5 into "5" and its IntegerField turns "5" into 5. A form has only strings,
so that is right for multipart and urlencoded bodies; in a JSON body it hides a client sending the
wrong type, and the OpenAPI schema would then describe a looser API than the one documented. These
fields refuse the wrong JSON type and keep DRF's conversions for form bodies."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import QueryDict
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers


def _from_json(field: serializers.Field) -> bool:
    return not isinstance(getattr(field.root, "initial_data", None), QueryDict)


class StrictCharField(serializers.CharField):
    default_error_messages = {"not_a_string": _("Must be a string.")}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str) and _from_json(self):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"not_an_integer": _("Must be an integer.")}

    def to_internal_value(self, data: Any) -> int:
        if (isinstance(data, bool) or not isinstance(data, int)) and _from_json(self):
            self.fail("not_an_integer")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true/false: JSON booleans, or the words "true"/"false" in a form (what the OpenAPI schema
    says a form's boolean is; DRF alone would also take "1", "on", "yes" and their opposites)."""

    default_error_messages = {"not_a_boolean": _("Must be true or false.")}

    def to_internal_value(self, data: Any) -> bool:
        if _from_json(self):
            if not isinstance(data, bool):
                self.fail("not_a_boolean")
            return data
        if isinstance(data, bool):  # a form without the field: DRF's empty-checkbox False
            return data
        if not isinstance(data, str) or data.lower() not in ("true", "false"):
            self.fail("not_a_boolean")
        return data.lower() == "true"


class StrictModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose text fields are StrictCharFields and that refuses fields it does not
    have (a misspelt `product_nmae` must not be dropped in silence). The OpenAPI schema says so
    with `additionalProperties: false` (simsearch_project.schema)."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(str(key) for key in data if key not in writable)
            if unknown:
                raise serializers.ValidationError({key: [gettext("Unknown field.")] for key in unknown})
        return super().to_internal_value(data)
