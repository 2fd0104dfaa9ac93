"""django-filter, strict about the values it is given.

django-filter reads an empty choice ("?image_type=") or an unreadable boolean ("?is_active=maybe")
as "no filter" and answers the whole list: a client's typo then looks like an answer. The OpenAPI
schema names the values each filter takes; anything else is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import django_filters
from django.utils.translation import gettext
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError

BOOLEAN_VALUES = {"true", "false"}


class StrictDjangoFilterBackend(DjangoFilterBackend):
    def get_filterset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset = super().get_filterset(request, queryset, view)
        if filterset is None:
            return None
        problems: dict[str, list[str]] = {}
        for name, filter_ in filterset.filters.items():
            if name not in request.query_params:
                continue
            value = request.query_params[name]
            if isinstance(filter_, django_filters.BooleanFilter) and value.lower() not in BOOLEAN_VALUES:
                problems[name] = [gettext("Use true or false.")]
            elif isinstance(filter_, django_filters.ChoiceFilter):
                allowed = [str(choice) for choice, _ in filter_.extra.get("choices", [])]
                if value not in allowed:
                    problems[name] = [gettext("Use one of: %(choices)s.") % {"choices": ", ".join(allowed)}]
        if problems:
            raise ValidationError(problems)
        return filterset
