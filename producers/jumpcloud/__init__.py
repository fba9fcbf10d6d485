"""JumpCloud connector: feeds the pool from JumpCloud's public API by itself.

``provisioner jumpcloud sync`` reads the whole directory into a snapshot and publishes it;
``provisioner jumpcloud follow`` polls Directory Insights for changes and publishes v1 events,
with a scheduled sync as its safety net. Modules: ``api`` (the HTTP client), ``mapping`` (pure:
JumpCloud objects and Insights events to v1 records and changes), ``directory`` (snapshot
lines), ``sync``, ``follow``, ``cli``.

The documents this connector is built from (each module cites the parts it relies on):

- JumpCloud API 1.0 (system users, the ``x-api-key`` and ``x-org-id`` headers, the US, EU
  and India servers): https://docs.jumpcloud.com/api/1.0/index.html, OpenAPI
  https://docs.jumpcloud.com/api/1.0/index.yaml
- JumpCloud API 2.0 (user groups, their members, an application's associations):
  https://docs.jumpcloud.com/api/2.0/index.html
- Directory Insights API 1.0 (``POST /insights/directory/v1/events``, ``search_after`` paging,
  event types): https://docs.jumpcloud.com/api/insights/directory/1.0/index.html
- The three specifications as JumpCloud publishes them for its SDKs (read for this module):
  https://github.com/TheJumpCloud/jcapi-powershell/tree/master/SwaggerSpecs
  (``JumpCloud.SDK.V1.json``, ``JumpCloud.SDK.V2.json``, ``JumpCloud.SDK.DirectoryInsights.json``)
- Best Practices: JumpCloud API (429 among the answers to expect, ``sort=_id`` when paging
  with ``skip``): https://jumpcloud.com/support/best-practices-jumpcloud-api
- JumpCloud Data Centers: Login URLs and Service Endpoints:
  https://jumpcloud.com/support/jumpcloud-data-centers-login-urls-and-service-endpoints
- How JumpCloud's own tools read ``association_change`` events (``association.op``,
  ``association.connection.from|to.type|object_id``):
  https://github.com/TheJumpCloud/jumpcloud-dashboard/blob/master/JumpCloud.Dashboard/Private/Functions/Get-GroupAssociationChange.ps1
- How JumpCloud's own Insights exporter pages and picks the regional host (``X-Search_After``
  decoded as JSON, more pages while ``X-Result-Count`` reaches ``X-Limit``,
  ``api.eu.jumpcloud.com``):
  https://github.com/TheJumpCloud/JumpCloud-Serverless/blob/master/AWS/DirectoryInsights/get-jcdirectoryinsights.py
"""
