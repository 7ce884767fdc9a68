<?xml version="1.0" encoding="UTF-8"?>
<!--
  load.xsl: free listener slots per mount, in django-icecast-balancer's format.

  Copy this file into the web root of every Icecast2 server polled with
  status = "load-xsl" (on Debian: /usr/share/icecast2/web/), then check
  http://<icecast>:<port>/load.xsl. It prints

    <load>
      <mount name="/fm4-hq.ogg" listeners="68" max_listeners="100">32</mount>
      <mount name="/fm4-lq.mp3" listeners="3" max_listeners="unlimited">unlimited</mount>
    </load>

  The text of each <mount> is the number of free slots (max_listeners minus
  listeners, never below 0), as django-icecast-balancer's load.xsl printed it.
  Where that file printed NaN (a mount without <max-listeners>), this one
  prints the word "unlimited"; the listeners and max_listeners attributes are
  additions that old readers ignore. Only mounts with a connected source appear:
  Icecast lists no others.
-->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" indent="yes" encoding="UTF-8" media-type="text/xml"/>

  <xsl:template match="/icestats">
    <load>
      <xsl:for-each select="source">
        <xsl:variable name="listeners" select="number(listeners)"/>
        <xsl:variable name="max" select="number(max_listeners)"/>
        <mount name="{@mount}" listeners="{listeners}" max_listeners="{max_listeners}">
          <xsl:choose>
            <!-- A value is a number exactly when it equals itself (NaN does not). -->
            <xsl:when test="$max = $max and $listeners = $listeners and $max &gt; $listeners">
              <xsl:value-of select="$max - $listeners"/>
            </xsl:when>
            <xsl:when test="$max = $max and $listeners = $listeners">0</xsl:when>
            <xsl:when test="$max = $max">
              <!-- No usable listener count: report no room rather than guess. -->
              <xsl:text>0</xsl:text>
            </xsl:when>
            <xsl:otherwise>unlimited</xsl:otherwise>
          </xsl:choose>
        </mount>
      </xsl:for-each>
    </load>
  </xsl:template>
</xsl:stylesheet>
